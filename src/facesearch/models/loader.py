"""Turn a manifest into a live model, and build the registry an installation sees."""
from __future__ import annotations

from pathlib import Path

from facesearch.errors import ManifestError
from facesearch.models.base import Embedder
from facesearch.models.manifest import ModelManifest, ModelRegistry


def load_embedder(
    manifest: ModelManifest, *, providers: list[str] | None = None, threads: int = 1
) -> Embedder:
    """An :class:`Embedder` for ``manifest``, chosen by its ``runtime``.

    Nothing heavy happens here: ONNX sessions are created (and files verified) on first use.
    ``providers``/``threads`` apply to ONNX models only.
    """
    if manifest.family != "embedder":
        raise ManifestError(
            f"model {manifest.id!r} is a {manifest.family}, not an embedder"
        )
    if manifest.runtime == "onnx":
        from facesearch.models.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(manifest, providers=providers, threads=threads)
    if manifest.runtime == "dlib":
        from facesearch.models.dlib_models import DlibEmbedder

        return DlibEmbedder(manifest)
    raise ManifestError(
        f"model {manifest.id!r}: no embedder for runtime {manifest.runtime!r}"
    )


def registry_for(home: Path, model_dir: Path | None = None) -> ModelRegistry:
    """The bundled manifests plus ``home/models/*.json`` and ``model_dir/*.json``.

    Later directories win when two manifests share an id.
    """
    dirs = [Path(home) / "models"]
    if model_dir is not None:
        dirs.append(Path(model_dir))
    return ModelRegistry(dirs)
