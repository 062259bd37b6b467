"""Run our ONNX graphs (dlib's ResNet from our conversion, MTCNN's P/R/O-Nets) as PyTorch
modules, for the CUDA path (``FACESEARCH_DEVICE=cuda``).

ONNX Runtime's CUDA build is too large to ship to the GPU machines we use, while PyTorch with
CUDA is there; so :class:`TorchGraph` reads an ONNX file's weights and node list and replays
the nodes with ``torch.nn.functional``. It supports exactly the operators those graphs use
(listed in ``OPS``) and refuses a graph with any other, naming it. Outputs equal ONNX
Runtime's to float rounding (tests/unit/test_torch_models.py).

PyTorch is an optional dependency (the ``gpu`` extra); it is imported when a graph is built.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import ModelError

OPS = ("Add", "AveragePool", "Conv", "Flatten", "GlobalAveragePool", "MatMul", "MaxPool", "Mul",
       "PRelu", "Pad", "Relu", "Softmax", "Sub", "Transpose")


def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def cuda_available() -> bool:
    if not torch_available():
        return False
    import torch

    return bool(torch.cuda.is_available())


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """ONNX SAME_UPPER padding (the extra pixel goes at the end) for one spatial axis."""
    out = -(-size // s)
    total = max(0, (out - 1) * s + k - size)
    return total // 2, total - total // 2


class TorchGraph:
    """An ONNX graph replayed with PyTorch on ``device`` (a ``torch.device`` or its name).

    ``__call__`` takes and returns torch tensors (the graph's inputs in order, its outputs in
    order); :meth:`run` takes and returns NumPy arrays like ``InferenceSession.run``.
    """

    def __init__(self, path: Path, device: Any = "cpu") -> None:
        import onnx
        import torch
        from onnx import numpy_helper

        model = onnx.load(str(path))
        g = model.graph
        unknown = sorted({n.op_type for n in g.node} - set(OPS))
        if unknown:
            raise ModelError(f"{Path(path).name}: operators {unknown} are not supported by TorchGraph")
        self.device = torch.device(device)
        self.consts: dict[str, Any] = {
            t.name: torch.from_numpy(np.array(numpy_helper.to_array(t))).to(self.device) for t in g.initializer
        }
        self.inputs = [i.name for i in g.input if i.name not in self.consts]
        self.outputs = [o.name for o in g.output]
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in g.node]
        # after node i, the activations no later node reads are dropped (peak memory of a deep
        # graph on a large batch stays a few activations, not all of them)
        last: dict[str, int] = {}
        for i, (_, ins, _, _) in enumerate(self.nodes):
            for name in ins:
                if name and name not in self.consts:
                    last[name] = i
        keep = set(self.outputs)
        self._drop = [[n for n, j in last.items() if j == i and n not in keep] for i in range(len(self.nodes))]
        # Conv weights: ONNX and PyTorch agree (out, in, kh, kw); MatMul right operands stay.
        self._ops: dict[str, Callable[..., Any]] = {
            "Add": lambda a, b, **_: a + b,
            "Sub": lambda a, b, **_: a - b,
            "Mul": lambda a, b, **_: a * b,
            "Relu": lambda x, **_: torch.relu(x),
            "PRelu": self._prelu,
            "MatMul": lambda a, b, **_: a @ b,
            "Flatten": lambda x, axis=1, **_: x.reshape(*x.shape[:axis], -1) if axis == 0 else
            x.reshape(int(np.prod(x.shape[:axis])), -1),
            "Transpose": lambda x, perm=None, **_: x.permute(*perm),
            "Softmax": lambda x, axis=-1, **_: torch.softmax(x, dim=axis),
            "GlobalAveragePool": lambda x, **_: x.mean(dim=(2, 3), keepdim=True),
            "Conv": self._conv,
            "MaxPool": self._maxpool,
            "AveragePool": self._avgpool,
            "Pad": self._pad,
        }

    # -- operators --------------------------------------------------------------------------
    @staticmethod
    def _prelu(x: Any, slope: Any, **_: Any) -> Any:
        import torch

        if slope.dim() == 3 and x.dim() == 4 and slope.shape[0] != x.shape[1]:
            slope = slope.permute(2, 0, 1)  # (1, 1, C) stored for an NHWC graph; x is NCHW here
        elif slope.dim() in (1, 3) and x.dim() == 4:
            slope = slope.reshape(1, -1, 1, 1)
        return torch.where(x >= 0, x, x * slope)

    @staticmethod
    def _spatial_pads(x: Any, kernel: list[int], strides: list[int], auto_pad: str,
                      pads: list[int] | None) -> tuple[list[int], bool]:
        """(left, right, top, bottom) as torch's F.pad wants them, and whether any is non-zero."""
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            (t, b), (lft, r) = (_same_pads(x.shape[2], kernel[0], strides[0]),
                                _same_pads(x.shape[3], kernel[1], strides[1]))
            if auto_pad == "SAME_LOWER":
                t, b, lft, r = b, t, r, lft
        elif pads:
            t, lft, b, r = pads
        else:
            t = b = lft = r = 0
        p = [lft, r, t, b]
        return p, any(p)

    def _conv(self, x: Any, w: Any, b: Any = None, *, strides: list[int] | None = None,
              auto_pad: str = "NOTSET", pads: list[int] | None = None, group: int = 1,
              dilations: list[int] | None = None, kernel_shape: list[int] | None = None, **_: Any) -> Any:
        import torch.nn.functional as F

        strides = strides or [1, 1]
        k = kernel_shape or list(w.shape[2:])
        p, any_pad = self._spatial_pads(x, k, strides, auto_pad, pads)
        if any_pad:
            x = F.pad(x, p)
        return F.conv2d(x, w, b, stride=strides, dilation=dilations or [1, 1], groups=group)

    def _maxpool(self, x: Any, *, kernel_shape: list[int], strides: list[int] | None = None,
                 auto_pad: str = "NOTSET", pads: list[int] | None = None, ceil_mode: int = 0, **_: Any) -> Any:
        import torch.nn.functional as F

        strides = strides or [1, 1]
        p, any_pad = self._spatial_pads(x, kernel_shape, strides, auto_pad, pads)
        if any_pad:
            x = F.pad(x, p, value=float("-inf"))
        return F.max_pool2d(x, kernel_shape, strides, ceil_mode=bool(ceil_mode))

    def _avgpool(self, x: Any, *, kernel_shape: list[int], strides: list[int] | None = None,
                 auto_pad: str = "NOTSET", pads: list[int] | None = None, ceil_mode: int = 0,
                 count_include_pad: int = 0, **_: Any) -> Any:
        import torch.nn.functional as F

        strides = strides or [1, 1]
        p, any_pad = self._spatial_pads(x, kernel_shape, strides, auto_pad, pads)
        if any_pad:
            if count_include_pad or p[0] != p[1] or p[2] != p[3]:
                raise ModelError("AveragePool with this padding is not supported by TorchGraph")
            return F.avg_pool2d(x, kernel_shape, strides, padding=(p[2], p[0]),
                                ceil_mode=bool(ceil_mode), count_include_pad=False)
        return F.avg_pool2d(x, kernel_shape, strides, ceil_mode=bool(ceil_mode))

    @staticmethod
    def _pad(x: Any, pads: Any, value: Any = None, *, mode: str = "constant", **_: Any) -> Any:
        import torch.nn.functional as F

        if mode != "constant":
            raise ModelError(f"Pad mode {mode!r} is not supported by TorchGraph")
        pv = [int(v) for v in pads.tolist()]
        n = len(pv) // 2
        begins, ends = pv[:n], pv[n:]
        torch_pads: list[int] = []
        for axis in reversed(range(n)):  # F.pad lists the last axis first
            torch_pads += [begins[axis], ends[axis]]
        fill = float(value.item()) if value is not None else 0.0
        return F.pad(x, torch_pads, value=fill)

    # -- running ----------------------------------------------------------------------------
    def __call__(self, *inputs: Any) -> list[Any]:
        import torch

        env: dict[str, Any] = dict(self.consts)
        env.update(zip(self.inputs, inputs))
        with torch.inference_mode():
            for (op, ins, outs, attrs), drop in zip(self.nodes, self._drop):
                args = [env[i] if i else None for i in ins]
                env[outs[0]] = self._ops[op](*args, **attrs)
                del args
                for name in drop:
                    env.pop(name, None)
        return [env[o] for o in self.outputs]

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        import torch

        ts = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True) for a in arrays]
        return [o.float().cpu().numpy() for o in self(*ts)]
