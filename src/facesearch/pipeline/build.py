"""Build the face pipeline from settings."""
from __future__ import annotations

from facesearch.config import Settings
from facesearch.models.loader import load_embedder, registry_for
from facesearch.models.manifest import ModelRegistry
from facesearch.pipeline.pipeline import FacePipeline, PipelineOptions
from facesearch.pipeline.quality import QualityPolicy

MODEL_ALIASES = {"dlib": "dlib-resnet-v1"}


def pipeline_options(settings: Settings) -> PipelineOptions:
    return PipelineOptions(
        detector=settings.detector,
        upsample=settings.upsample,
        max_side=settings.max_side_for_detection,
        flip=settings.jitter_flip,
        quality=QualityPolicy(settings.min_face_px, settings.min_sharpness, settings.max_pose),
        threads=settings.ort_threads,
    )


def build_pipeline(settings: Settings, registry: ModelRegistry | None = None) -> FacePipeline:
    registry = registry or registry_for(settings.home, settings.model_dir)
    embedder_id = MODEL_ALIASES.get(settings.model, settings.model)
    embedder = load_embedder(registry.get(embedder_id), threads=settings.ort_threads)
    return FacePipeline(registry, embedder, pipeline_options(settings))
