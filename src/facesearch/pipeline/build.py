"""Build the face pipeline of a model pack from settings: the one place models are chosen
and the one place a pack's licence acceptance is checked."""
from __future__ import annotations

from facesearch.config import Settings
from facesearch.models.base import Detector
from facesearch.models.dlib_models import DlibHogDetector, DlibLandmarks
from facesearch.models.loader import load_embedder, registry_for
from facesearch.models.manifest import ModelRegistry
from facesearch.models.packs import ModelPack, PackRegistry
from facesearch.pipeline.pipeline import FacePipeline, PipelineOptions
from facesearch.pipeline.quality import QualityPolicy

DETECTOR_ALIASES = {"hog": "dlib-hog", "mtcnn": "mtcnn", "scrfd": "scrfd-500m"}


def pipeline_options(settings: Settings) -> PipelineOptions:
    return PipelineOptions(
        flip=settings.jitter_flip,
        quality=QualityPolicy(settings.min_face_px, settings.min_sharpness, settings.max_pose),
        landmarks=settings.landmarks,
    )


def packs_for(settings: Settings, registry: ModelRegistry | None = None) -> PackRegistry:
    registry = registry or registry_for(settings.home, settings.model_dir)
    return PackRegistry(registry, [settings.home / "packs"])


def make_detector(detector_id: str, registry: ModelRegistry, settings: Settings) -> Detector:
    if detector_id == "dlib-hog":
        return DlibHogDetector(upsample=settings.upsample, max_side=settings.max_side_for_detection)
    if detector_id == "mtcnn":
        from facesearch.models.mtcnn import MtcnnDetector

        return MtcnnDetector(registry.get("mtcnn"), threads=settings.ort_threads)
    if detector_id == "scrfd-500m":
        from facesearch.models.scrfd import ScrfdDetector

        return ScrfdDetector(registry.get("scrfd-500m"), threads=settings.ort_threads)
    raise ValueError(f"unknown detector {detector_id!r}")


def build_pipeline(settings: Settings, registry: ModelRegistry | None = None,
                   pack: str | ModelPack | None = None) -> FacePipeline:
    """The pipeline of ``pack`` (default: ``settings.model``), refusing a pack whose licence
    the operator has not accepted."""
    registry = registry or registry_for(settings.home, settings.model_dir)
    if not isinstance(pack, ModelPack):
        pack = packs_for(settings, registry).get(pack or settings.model)
    pack.check_accepted(settings.accept_model_license)
    embedder = load_embedder(registry.get(pack.embedder), threads=settings.ort_threads)
    detector_id = DETECTOR_ALIASES[settings.detector] if settings.detector else pack.detector
    return FacePipeline(
        detector=make_detector(detector_id, registry, settings),
        landmarks=DlibLandmarks(registry.get(pack.landmarks or "dlib-5pt")),
        embedder=embedder,
        options=pipeline_options(settings),
        pack=pack.id,
    )
