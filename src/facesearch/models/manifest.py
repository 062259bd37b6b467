"""Model manifests: which files a model needs, their sha256, and how to feed the model.

A manifest is a JSON file. Bundled manifests live in ``facesearch/models/manifests``;
an operator can register more by dropping a manifest into ``$FACESEARCH_HOME/models`` (or
``FACESEARCH_MODEL_DIR``). Files are located either inside an installed Python package
(``"package"`` + ``"path"``) or on disk (``"path"``, absolute or relative to the manifest).
Every file is checked against its sha256 when the model is loaded.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from facesearch.errors import ManifestError, ModelFileMismatch, ModelFileMissing

Family = Literal["detector", "landmarks", "embedder"]
_FAMILIES = ("detector", "landmarks", "embedder")


@dataclass(frozen=True)
class ModelFile:
    name: str
    sha256: str
    path: str
    package: str | None = None


@dataclass(frozen=True)
class ModelManifest:
    id: str
    family: Family
    runtime: Literal["dlib", "onnx"]
    files: tuple[ModelFile, ...]
    source: Path | None = None  # the manifest file itself (None for built-in dicts)
    input_size: tuple[int, int] | None = None  # (width, height)
    alignment: str | None = None  # e.g. "dlib-chip-150-0.25" or "arcface-112"
    embedding_dim: int | None = None
    metric: str = "cosine"
    color: str = "RGB"
    layout: str = "NCHW"
    mean: float = 0.0
    std: float = 1.0
    license: str = ""
    commercial_use: bool = True
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def resolve(self, name: str | None = None) -> Path:
        """Path of one file (the first when ``name`` is None), checked to exist."""
        f = self.files[0] if name is None else self.file(name)
        return _locate(self, f)

    def file(self, name: str) -> ModelFile:
        for f in self.files:
            if f.name == name:
                return f
        raise ManifestError(f"model {self.id!r}: manifest has no file named {name!r}")

    def verify(self) -> dict[str, Path]:
        """Locate every file and check its sha256; returns name -> path."""
        out: dict[str, Path] = {}
        for f in self.files:
            p = _locate(self, f)
            digest = file_sha256(p)
            if digest != f.sha256.lower():
                raise ModelFileMismatch(
                    f"model {self.id!r}: file {p} has sha256 {digest}, manifest expects {f.sha256}"
                )
            out[f.name] = p
        return out


def _locate(m: ModelManifest, f: ModelFile) -> Path:
    if f.package:
        spec = importlib.util.find_spec(f.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelFileMissing(
                f"model {m.id!r}: file {f.name!r} should come from the Python package "
                f"{f.package!r}, which is not installed"
            )
        base = Path(list(spec.submodule_search_locations)[0])
        p = base / f.path
    else:
        p = Path(f.path)
        if not p.is_absolute() and m.source is not None:
            p = m.source.parent / p
    if not p.is_file():
        raise ModelFileMissing(f"model {m.id!r}: file {f.name!r} not found at {p}")
    return p


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    cached = _SHA_CACHE.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    _SHA_CACHE[key] = digest
    return digest


def parse_manifest(data: dict[str, Any], source: Path | None = None) -> ModelManifest:
    where = str(source) if source else "manifest"
    try:
        mid = str(data["id"])
        family = data["family"]
        runtime = data["runtime"]
        raw_files = data["files"]
    except KeyError as e:
        raise ManifestError(f"{where}: missing key {e.args[0]!r}") from None
    if family not in _FAMILIES:
        raise ManifestError(f"{where}: family must be one of {_FAMILIES}, not {family!r}")
    if runtime not in ("dlib", "onnx"):
        raise ManifestError(f"{where}: runtime must be 'dlib' or 'onnx', not {runtime!r}")
    if not isinstance(raw_files, list) or not raw_files:
        raise ManifestError(f"{where}: 'files' must be a non-empty list")
    files = []
    for rf in raw_files:
        if not isinstance(rf, dict) or "sha256" not in rf or "path" not in rf:
            raise ManifestError(f"{where}: every file needs 'path' and 'sha256'")
        files.append(
            ModelFile(
                name=str(rf.get("name") or Path(rf["path"]).name),
                sha256=str(rf["sha256"]).lower(),
                path=str(rf["path"]),
                package=rf.get("package"),
            )
        )
    size = data.get("input_size")
    if family == "embedder":
        if not data.get("embedding_dim"):
            raise ManifestError(f"{where}: an embedder manifest needs 'embedding_dim'")
        if not size:
            raise ManifestError(f"{where}: an embedder manifest needs 'input_size' [width, height]")
    known = {
        "id", "family", "runtime", "files", "input_size", "alignment", "embedding_dim",
        "metric", "color", "layout", "mean", "std", "license", "commercial_use", "description",
    }
    return ModelManifest(
        id=mid,
        family=family,
        runtime=runtime,
        files=tuple(files),
        source=source,
        input_size=(int(size[0]), int(size[1])) if size else None,
        alignment=data.get("alignment"),
        embedding_dim=int(data["embedding_dim"]) if data.get("embedding_dim") else None,
        metric=str(data.get("metric", "cosine")),
        color=str(data.get("color", "RGB")),
        layout=str(data.get("layout", "NCHW")),
        mean=float(data.get("mean", 0.0)),
        std=float(data.get("std", 1.0)),
        license=str(data.get("license", "")),
        commercial_use=bool(data.get("commercial_use", True)),
        description=str(data.get("description", "")),
        extra={k: v for k, v in data.items() if k not in known},
    )


def load_manifest(path: Path) -> ModelManifest:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: a manifest must be a JSON object")
    return parse_manifest(data, source=path)


BUILTIN_DIR = Path(__file__).parent / "manifests"


class ModelRegistry:
    """All manifests known to this installation: the bundled ones plus the operator's."""

    def __init__(self, extra_dirs: list[Path] | None = None) -> None:
        self._manifests: dict[str, ModelManifest] = {}
        for d in [BUILTIN_DIR, *(extra_dirs or [])]:
            if d.is_dir():
                for p in sorted(d.glob("*.json")):
                    m = load_manifest(p)
                    self._manifests[m.id] = m

    def register(self, manifest: ModelManifest) -> None:
        self._manifests[manifest.id] = manifest

    def get(self, model_id: str) -> ModelManifest:
        try:
            return self._manifests[model_id]
        except KeyError:
            known = ", ".join(sorted(self._manifests)) or "none"
            raise ManifestError(f"unknown model {model_id!r} (known: {known})") from None

    def all(self) -> list[ModelManifest]:
        return [self._manifests[k] for k in sorted(self._manifests)]
