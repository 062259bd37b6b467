"""Face embedders run with ONNX Runtime, described entirely by their manifest.

An operator registers an ONNX embedder (one they hold a licence for) with a JSON manifest::

    {
      "id": "my-arcface", "family": "embedder", "runtime": "onnx",
      "files": [{"path": "my-arcface.onnx", "sha256": "..."}],
      "input_size": [112, 112], "embedding_dim": 512,
      "mean": 127.5, "std": 127.5, "color": "RGB", "layout": "NCHW",
      "alignment": "arcface-112"
    }

The chips handed to :meth:`OnnxEmbedder.embed` are ``(N, H, W, 3)`` ``uint8`` RGB; they are
resized to ``input_size`` when needed, channel-swapped for ``"BGR"`` models, normalised as
``(x - mean) / std`` on 0..255 pixel values, laid out as ``NCHW`` or ``NHWC`` and run in
chunks. The ONNX session is created (and the file's sha256 checked) on first use.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from facesearch.errors import InvalidInput, ManifestError, ModelError
from facesearch.models.manifest import ModelManifest

ALIGNMENTS = ("dlib-chip-150-0.25", "arcface-112")
COLORS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
DEFAULT_BATCH_SIZE = 64

_ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


def available_providers() -> list[str]:
    """Execution providers this ONNX Runtime build offers (e.g. ``CUDAExecutionProvider``)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def session_options(threads: int = 1) -> Any:
    """ONNX Runtime session options using at most ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    n = max(1, int(threads))
    opts.intra_op_num_threads = n
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    return opts


def _resolve_providers(providers: list[str] | None) -> list[str]:
    """The requested providers that exist here, in order, always ending with the CPU one."""
    avail = available_providers()
    wanted = list(providers) if providers else ["CPUExecutionProvider"]
    out = [p for p in wanted if p in avail]
    if "CPUExecutionProvider" not in out and "CPUExecutionProvider" in avail:
        out.append("CPUExecutionProvider")
    if not out:
        raise ModelError(
            f"none of the ONNX Runtime providers {wanted} is available (have: {avail})"
        )
    return out


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class OnnxEmbedder:
    """An :class:`~facesearch.models.base.Embedder` backed by an ONNX graph.

    ``providers`` is the ONNX Runtime provider list (default CPU only; pass
    ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` for a GPU); providers not
    available in this build are dropped. ``threads`` bounds the intra-op thread count.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        providers: list[str] | None = None,
        threads: int = 1,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        _check_manifest(manifest)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.manifest = manifest
        self.providers = list(providers) if providers else None
        self.threads = max(1, int(threads))
        self.batch_size = int(batch_size)
        self._lock = threading.Lock()
        self._session: Any = None
        self._input_name = ""
        self._output_name = ""
        self._input_dtype: type = np.float32
        self._fixed_batch: int | None = None

    # -- Embedder protocol -------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def dim(self) -> int:
        assert self.manifest.embedding_dim is not None  # nosec B101 - narrows the type, not a security check
        return self.manifest.embedding_dim

    @property
    def input_size(self) -> tuple[int, int]:
        assert self.manifest.input_size is not None  # nosec B101 - narrows the type, not a security check
        return self.manifest.input_size

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Embed ``(N, H, W, 3)`` RGB chips; returns ``float32`` ``(N, dim)``, L2-normalised."""
        chips = _as_chips(chips)
        n = chips.shape[0]
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        x = self.preprocess(chips)
        step = self._fixed_batch or self.batch_size
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, step):
            part = x[start : start + step]
            k = part.shape[0]
            if self._fixed_batch is not None and k < self._fixed_batch:
                pad = np.zeros((self._fixed_batch - k, *part.shape[1:]), dtype=part.dtype)
                part = np.concatenate([part, pad], axis=0)
            out[start : start + k] = self._run(part)[:k]
        return l2_normalise(out)

    # -- loading -----------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def load(self) -> None:
        """Verify the file's sha256, create the session and check the graph against the manifest.

        Called by :meth:`embed` on first use; call it directly to fail early.
        """
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            path = self.manifest.verify()[self.manifest.files[0].name]
            import onnxruntime as ort

            try:
                sess = ort.InferenceSession(
                    str(path),
                    sess_options=session_options(self.threads),
                    providers=_resolve_providers(self.providers),
                )
            except ModelError:
                raise
            except Exception as e:  # onnxruntime raises its own exception types
                raise ModelError(
                    f"model {self.id!r}: ONNX Runtime could not load {path}: {e}"
                ) from None
            self._inspect(sess)
            self._session = sess

    def _inspect(self, sess: Any) -> None:
        m = self.manifest
        where = f"model {m.id!r}"
        inputs = sess.get_inputs()
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise ManifestError(f"{where}: the graph must have exactly one input, it has {names}")
        inp = inputs[0]
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ManifestError(
                f"{where}: graph input {inp.name!r} has rank {len(shape)} (shape {shape}); "
                f"an embedder needs a rank-4 image batch ({m.layout})"
            )
        if inp.type not in _ONNX_DTYPES:
            raise ManifestError(
                f"{where}: graph input {inp.name!r} has type {inp.type}; "
                f"supported: {sorted(_ONNX_DTYPES)}"
            )
        if m.layout == "NCHW":
            c, h, w = shape[1], shape[2], shape[3]
        else:
            h, w, c = shape[1], shape[2], shape[3]
        if isinstance(c, int) and c != 3:
            raise ManifestError(
                f"{where}: manifest layout {m.layout} puts channels at a dimension of size {c} "
                f"in graph input shape {shape} (expected 3); check 'layout'"
            )
        want_w, want_h = self.input_size
        if (isinstance(h, int) and h != want_h) or (isinstance(w, int) and w != want_w):
            raise ManifestError(
                f"{where}: manifest input_size is [{want_w}, {want_h}] (width, height) but the "
                f"graph input {inp.name!r} expects height {h} and width {w} (shape {shape}, "
                f"layout {m.layout})"
            )
        batch = shape[0]
        self._fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

        outputs = sess.get_outputs()
        if not outputs:
            raise ManifestError(f"{where}: the graph has no outputs")
        out = outputs[0]
        oshape = list(out.shape)
        if len(oshape) < 2:
            raise ManifestError(
                f"{where}: graph output {out.name!r} has shape {oshape}; expected (batch, {self.dim})"
            )
        last = oshape[-1]
        if isinstance(last, int) and last != self.dim:
            raise ManifestError(
                f"{where}: manifest embedding_dim is {self.dim} but graph output "
                f"{out.name!r} has last dimension {last} (shape {oshape})"
            )
        self._input_name = inp.name
        self._output_name = out.name
        self._input_dtype = _ONNX_DTYPES[inp.type]

    # -- running -----------------------------------------------------------------------

    def preprocess(self, chips: np.ndarray) -> np.ndarray:
        """RGB uint8 chips -> the graph's input tensor (resize, colour, normalise, layout)."""
        m = self.manifest
        chips = _as_chips(chips)
        want_w, want_h = self.input_size
        if chips.shape[1] != want_h or chips.shape[2] != want_w:
            chips = resize_chips(chips, (want_w, want_h))
        x = chips.astype(np.float32)
        if m.color == "BGR":
            x = x[..., ::-1]
        x = (x - np.float32(m.mean)) / np.float32(m.std)
        if m.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=self._input_dtype)

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            (y,) = self._session.run([self._output_name], {self._input_name: x})
        except Exception as e:
            raise ModelError(f"model {self.id!r}: inference failed: {e}") from None
        y = np.asarray(y, dtype=np.float32).reshape(x.shape[0], -1)
        if y.shape[1] != self.dim:
            raise ManifestError(
                f"model {self.id!r}: manifest embedding_dim is {self.dim} but the graph "
                f"produced {y.shape[1]} values per face"
            )
        return y

    def __repr__(self) -> str:
        return (
            f"OnnxEmbedder(id={self.id!r}, dim={self.dim}, input_size={self.input_size}, "
            f"loaded={self.loaded})"
        )


def resize_chips(chips: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(N, H, W, 3)`` uint8 chips to ``size`` = (width, height)."""
    import cv2

    w, h = size
    shrink = chips.shape[1] > h or chips.shape[2] > w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = np.empty((chips.shape[0], h, w, 3), dtype=chips.dtype)
    for i, c in enumerate(chips):
        out[i] = cv2.resize(c, (w, h), interpolation=interp)
    return out


def _as_chips(chips: Any) -> np.ndarray:
    a = np.asarray(chips)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise InvalidInput(f"chips must be an (N, H, W, 3) RGB array, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return a


def _check_manifest(m: ModelManifest) -> None:
    where = f"model {m.id!r}" + (f" ({m.source})" if m.source else "")
    if m.family != "embedder":
        raise ManifestError(f"{where}: family is {m.family!r}, not 'embedder'")
    if m.runtime != "onnx":
        raise ManifestError(f"{where}: runtime is {m.runtime!r}, not 'onnx'")
    if not m.embedding_dim or m.embedding_dim < 1:
        raise ManifestError(f"{where}: an embedder manifest needs a positive 'embedding_dim'")
    if not m.input_size or min(m.input_size) < 1:
        raise ManifestError(f"{where}: an embedder manifest needs 'input_size' [width, height]")
    if m.color not in COLORS:
        raise ManifestError(f"{where}: color must be one of {COLORS}, not {m.color!r}")
    if m.layout not in LAYOUTS:
        raise ManifestError(f"{where}: layout must be one of {LAYOUTS}, not {m.layout!r}")
    if m.alignment not in ALIGNMENTS:
        raise ManifestError(
            f"{where}: alignment must be one of {ALIGNMENTS}, not {m.alignment!r}"
        )
    if not np.isfinite(m.std) or m.std == 0 or not np.isfinite(m.mean):
        raise ManifestError(f"{where}: mean must be finite and std finite and non-zero")
    if len(m.files) != 1:
        raise ManifestError(f"{where}: an ONNX embedder needs exactly one file (the .onnx graph)")
