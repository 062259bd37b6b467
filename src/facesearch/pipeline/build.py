"""Build the face pipeline of a model pack from settings: the one place models are chosen
and the one place a pack's licence acceptance is checked."""
from __future__ import annotations

import logging

import numpy as np

from facesearch.config import Settings
from facesearch.models.base import Detector, Embedder
from facesearch.models.dlib_models import DlibHogDetector, DlibLandmarks
from facesearch.models.loader import load_embedder, registry_for
from facesearch.models.manifest import ModelManifest, ModelRegistry
from facesearch.models.packs import ModelPack, PackRegistry
from facesearch.pipeline.pipeline import FacePipeline, PipelineOptions
from facesearch.pipeline.quality import QualityPolicy

log = logging.getLogger(__name__)

DLIB_RESNET = "dlib-resnet-v1"
DETECTOR_ALIASES = {"hog": "dlib-hog", "mtcnn": "mtcnn", "scrfd": "scrfd-500m"}


def pipeline_options(settings: Settings) -> PipelineOptions:
    return PipelineOptions(
        flip=settings.jitter_flip,
        quality=QualityPolicy(settings.min_face_px, settings.min_sharpness, settings.max_pose),
        landmarks=settings.landmarks,
        align_backend=settings.align_backend,
    )


def resolve_device(settings: Settings) -> str:
    """``settings.device``, or "cpu" with one log line when CUDA is asked for but unusable."""
    if settings.device != "cuda":
        return "cpu"
    from facesearch.models.torch_models import resolve_device as usable, why_no_cuda

    if usable("cuda") == "cuda":
        return "cuda"
    log.warning("FACESEARCH_DEVICE=cuda but %s: detection and embedding run on the CPU", why_no_cuda())
    return "cpu"


def packs_for(settings: Settings, registry: ModelRegistry | None = None) -> PackRegistry:
    registry = registry or registry_for(settings.home, settings.model_dir)
    return PackRegistry(registry, [settings.home / "packs"])


def make_detector(detector_id: str, registry: ModelRegistry, settings: Settings,
                  device: str = "cpu") -> Detector:
    if device == "cuda" and detector_id == "mtcnn":
        from facesearch.models.torch_models import TorchMtcnnDetector

        return TorchMtcnnDetector(registry.get("mtcnn"), device="cuda", min_face_size=max(20, settings.min_face_px))
    if detector_id == "dlib-hog":
        return DlibHogDetector(upsample=settings.upsample, max_side=settings.max_side_for_detection)
    if detector_id == "mtcnn":  # faces under min_face_px are rejected anyway: the pyramid starts there
        from facesearch.models.mtcnn import MtcnnDetector

        return MtcnnDetector(registry.get("mtcnn"), threads=settings.ort_threads,
                             min_face_size=max(20, settings.min_face_px))
    if detector_id == "scrfd-500m":
        from facesearch.models.scrfd import ScrfdDetector

        return ScrfdDetector(registry.get("scrfd-500m"), threads=settings.ort_threads)
    raise ValueError(f"unknown detector {detector_id!r}")


class ConvertedEmbedder:
    """dlib's ResNet run on ONNX Runtime from our own conversion of its weights. It keeps the
    model id of the original: the embeddings are the same (tests/unit/test_dlib_onnx.py), so
    galleries embedded either way are interchangeable."""

    def __init__(self, original: ModelManifest, inner: Embedder) -> None:
        self.manifest = original
        self.inner = inner

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, chips: np.ndarray) -> np.ndarray:
        return self.inner.embed(chips)


def make_embedder(embedder_id: str, registry: ModelRegistry, settings: Settings,
                  device: str = "cpu") -> Embedder:
    manifest = registry.get(embedder_id)
    if manifest.id == DLIB_RESNET and settings.embed_backend == "onnx":
        from facesearch.models.dlib_onnx import ensure_onnx
        from facesearch.models.manifest import load_manifest
        from facesearch.models.onnx_embedder import OnnxEmbedder

        converted = load_manifest(ensure_onnx(settings.home))
        if device == "cuda":
            from facesearch.models.torch_models import TorchEmbedder

            return ConvertedEmbedder(manifest, TorchEmbedder(converted, device="cuda",
                                                             batch_size=settings.embed_batch))
        return ConvertedEmbedder(manifest, OnnxEmbedder(converted, threads=settings.ort_threads,
                                                        batch_size=settings.embed_batch))
    return load_embedder(manifest, threads=settings.ort_threads)


def build_pipeline(settings: Settings, registry: ModelRegistry | None = None,
                   pack: str | ModelPack | None = None) -> FacePipeline:
    """The pipeline of ``pack`` (default: ``settings.model``), refusing a pack whose licence
    the operator has not accepted."""
    registry = registry or registry_for(settings.home, settings.model_dir)
    if not isinstance(pack, ModelPack):
        pack = packs_for(settings, registry).get(pack or settings.model)
    pack.check_accepted(settings.accept_model_license)
    device = resolve_device(settings)
    embedder = make_embedder(pack.embedder, registry, settings, device)
    detector_id = DETECTOR_ALIASES[settings.detector] if settings.detector else pack.detector
    if device == "cuda" and detector_id != "mtcnn":
        if settings.detector:
            log.warning("detector %s has no CUDA path: detection runs on the CPU", detector_id)
        else:  # the pack's HOG detector has no GPU path; MTCNN does
            detector_id = "mtcnn"
    return FacePipeline(
        detector=make_detector(detector_id, registry, settings, device),
        landmarks=DlibLandmarks(registry.get(pack.landmarks or "dlib-5pt")),
        embedder=embedder,
        options=pipeline_options(settings),
        pack=pack.id,
        device=device,
    )
