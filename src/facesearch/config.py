"""One settings object, built once at start-up and passed to whatever needs it.

Every field can be set from the environment with the ``FACESEARCH_`` prefix
(``FACESEARCH_HOME``, ``FACESEARCH_DATABASE_URL``, ...).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_workers() -> int:
    return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACESEARCH_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".facesearch")
    database_url: str | None = None  # default: sqlite file in the home folder

    # models and pipeline
    model: str = "dlib"  # model pack (models list), or the id of a registered embedder manifest
    accept_model_license: str | None = None  # e.g. "insightface-non-commercial"
    detector: Literal["hog", "mtcnn", "scrfd"] | None = None  # default: the pack's detector
    landmarks: Literal["auto", "dlib"] = "auto"  # auto: the detector's own 5 points when it has them
    model_dir: Path | None = None  # extra folder with operator-registered manifests
    upsample: int = 1  # HOG upsampling passes for normal photos
    max_pixels: int = 80_000_000  # decompression-bomb guard
    max_file_bytes: int = 60 * 1024 * 1024
    max_side_for_detection: int = 1600  # larger photos are downscaled for detection only
    min_face_px: int = 40  # faces smaller than this (box side) are "too small"
    min_sharpness: float = 15.0  # variance of the Laplacian on the aligned chip
    max_pose: float = 0.35  # landmark asymmetry (0 = frontal, ~0.5 = profile)
    jitter_flip: bool = True  # average the embedding of the chip and its mirror image
    ort_threads: int = 1
    # dlib's ResNet runs as our own ONNX conversion of its weights (same embeddings, cosine
    # >= 0.9999999, ~13x faster); "dlib" keeps dlib's own implementation as the reference.
    embed_backend: Literal["onnx", "dlib"] = "onnx"
    # dlib's 150x150 chip computed with OpenCV from the 5 landmarks (mean pixel difference ~0.5
    # from dlib's, embeddings cosine >= 0.99998); "dlib" keeps dlib's get_face_chip as reference.
    align_backend: Literal["opencv", "dlib"] = "opencv"
    # where detection and embedding run: "cuda" needs the `gpu` extra (PyTorch with CUDA) and
    # falls back to the CPU, with one log line, when no CUDA device is there.
    device: Literal["cpu", "cuda"] = "cpu"
    embed_batch: int = 64  # chips per inference call (ONNX Runtime or PyTorch)

    # index
    # "milvus": galleries without a recorded placement use Milvus (index/milvus_backend.py); a
    # gallery moved with `facesearch index migrate --to milvus` uses it whatever this says
    index: Literal["faiss", "milvus"] = "faiss"
    milvus_uri: str | None = None  # http://host:19530 (standalone or cluster proxy); needs .[milvus]
    milvus_token: str | None = None  # "user:password" or an API key; never logged
    milvus_collection_prefix: str = "facesearch"  # collections: <prefix>_<model>_<dim>
    milvus_index_type: Literal["HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "FLAT"] = "HNSW"
    milvus_search_ef: int = 64  # HNSW ef (at least top-k)
    milvus_nprobe: int = 32  # IVF_* nprobe (nlist 1024 per segment)
    exact_max: int = 50_000  # galleries up to this size use exact search (bench/results/index.md)
    ann_target_recall: float = 0.99
    # above exact_max: IVF with fp16 codes up to sq_max faces, then IVF-PQ re-ranked from float16
    # vectors on disk; PQ lists go on disk when they would exceed index_ram_gib (index/factory.py)
    sq_max: int = 2_000_000
    index_ram_gib: float = 4.0
    # IVF-PQ re-ranking store on disk: float16 (2 x d bytes per face) or int8 with a per-row
    # scale (d + 4 bytes: half the disk, for a 512-d gallery of 100M faces on a 100 GB disk; its
    # rounding costs about 0.02 recall@1, so raise ann_target_recall with it). Used by new
    # builds; an existing index keeps the store it was built with until it is rebuilt
    index_rerank_store: Literal["float16", "int8"] = "float16"

    # ingest
    workers: int = Field(default_factory=_default_workers)
    batch_size: int = 16

    # search
    top_k: int = 10
    threshold: float | None = None  # default: from the model's calibration

    # field encryption (store/crypto.py, services/keys.py): FACESEARCH_KEY (base64, or a keyring
    # "1:<base64>,2:<base64>") or a 0600 key file
    key: str | None = None
    key_file: Path | None = None  # default: <home>/keys/field.key
    # "production": `serve` refuses a missing key, a key file readable by others or a generated
    # development key, and no key file is ever generated; "development" generates one (0600)
    env: Literal["development", "production"] = "development"

    # the public transparency notice (GET /transparency)
    operator_name: str = "the operator of this facesearch installation"
    privacy_contact: str = "the operator's data protection officer"

    # retention (services/retention.py); the audit trail is never purged by these
    probe_retention_days: int = 90
    search_retention_days: int = 365
    retention_interval_s: int = 24 * 3600  # how often the server runs the schedule

    # service
    token_ttl_s: int = 15 * 60  # bearer tokens issued by POST /api/v1/auth/login
    max_upload_bytes: int = 20 * 1024 * 1024
    argon2_memory_kib: int = 64 * 1024
    argon2_time_cost: int = 3
    default_case_pattern: str = r"^\d{4}-\d{6}$"  # for agencies created without their own
    default_purposes: str = "robbery investigation,homicide investigation,missing person,fraud investigation"

    # rate limits (api/ratelimit.py): requests per rate_limit_window_s; 0 switches a rule off.
    # Per account: the normalised user name at sign-in, the signed-in user otherwise.
    rate_limit_window_s: int = 60
    rate_limit_login_per_address: int = 10
    rate_limit_login_per_account: int = 5
    rate_limit_search_per_account: int = 30
    rate_limit_search_per_address: int = 60
    rate_limit_export_per_account: int = 10
    rate_limit_export_per_address: int = 20
    # reverse proxies whose X-Forwarded-For is believed (addresses or networks, comma separated)
    trusted_proxies: str = ""

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'facesearch.db').as_posix()}"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    def ensure_home(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.index_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.home
