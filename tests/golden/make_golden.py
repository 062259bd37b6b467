"""Regenerate the golden detections and embeddings (only when a change is meant to alter them):

    python tests/golden/make_golden.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from facesearch.config import Settings  # noqa: E402
from facesearch.pipeline.build import build_pipeline  # noqa: E402
from facesearch.pipeline.decode import read_image  # noqa: E402
from tests.conftest import dev_data_path  # noqa: E402

GOLDEN = ["fr_obama/1.jpg", "deepface_Angelina/4.jpg", "dlib_John_Simm/1.jpg", "openface_Eric_Clapton/1.jpg"]


def main() -> None:
    for pack, name in (("dlib", "dlib-resnet-v1"), ("insightface-research", "w600k-mbf")):
        write(pack, name)


def write(pack: str, name: str) -> None:
    # the golden vectors of the research pack are recorded under its licence's acceptance
    s = Settings(model=pack, accept_model_license="insightface-non-commercial")
    p = build_pipeline(s)
    out = {}
    for rel in GOLDEN:
        img = read_image(dev_data_path() / rel, max_pixels=s.max_pixels)
        faces = p.analyze(img.rgb)
        out[rel] = {"box": faces[0].bbox.as_list(), "faces": len(faces),
                    "embedding": [round(float(v), 6) for v in faces[0].embedding]}
    (Path(__file__).parent / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
