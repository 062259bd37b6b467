"""Convert dlib's ResNet face embedder (``dlib_face_recognition_resnet_model_v1.dat``) to ONNX.

The ``.dat`` file is the output of dlib's ``serialize(net)`` for the network defined in
dlib's ``examples/dnn_face_recognition_ex.cpp`` (``anet_type``). dlib's stream does not name
the wrapper types (``add_layer``, ``add_tag_layer``, ``add_skip_layer``) it nests, so the reader
walks the file guided by that network definition and checks, layer by layer, every version
string, hyper-parameter and tensor shape it finds. Anything unexpected raises
:class:`~facesearch.errors.ModelError`.

What the reader knows about dlib's format (all little-endian, no file header):

* integers: one control byte (bit 7: negative; low 4 bits: number of bytes that follow),
  then that many bytes of magnitude, least significant first;
* floating point: a ``float_details`` pair, the signed 64-bit mantissa then the signed 16-bit
  exponent, both as integers above; value = mantissa * 2**exponent (exponents 32000, 32001,
  32002 stand for +inf, -inf, NaN);
* ``bool``: the ASCII byte ``'1'`` or ``'0'``; ``std::string``: length, then the bytes;
* tensors: version 2, then num_samples, k, nr, nc, then raw little-endian IEEE float32 data;
  alias tensors (views into a layer's ``params``): version 1 and the four sizes, no data.

Layer semantics reproduced in the graph:

* ``input_rgb_image``: ``(pixel - channel_average) / 256`` on RGB planes;
* ``con``: cross-correlation with bias (padding from the file: dlib pads 0 for strided
  convolutions here), optionally with dlib's fused ReLU (``con_6``);
* ``bn_con`` stored in the file becomes ``affine`` at inference exactly as dlib does it:
  ``gamma' = gamma / sqrt(running_var + eps)``, ``beta' = beta - gamma' * running_mean``;
  it is folded into the preceding convolution;
* ``add_prev``: dlib adds two tensors of *different* shapes by zero-padding both to the
  element-wise maximum shape (channels, rows, columns). This happens in this network: the
  down-sampling block of the third level adds a 3x3x256 main path to a 4x4x128 pooled
  shortcut, giving 4x4x256; the graph reproduces that with ``Pad`` nodes;
* ``avg_pool``/``max_pool``: windows with dlib's ``1 + (n + 2p - w) / s`` output size;
  ``avg_pool_everything`` is a global average;
* ``fc_no_bias``: ``x.flatten() @ W`` with ``W`` of shape (inputs, outputs);
* ``loss_metric``: no computation at inference (the 128-d output is not normalised).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import ModelError

MODEL_ID = "dlib-resnet-v1-onnx"
SOURCE_MODEL_ID = "dlib-resnet-v1"
ONNX_FILE = f"{MODEL_ID}.onnx"
MANIFEST_FILE = f"{MODEL_ID}.json"  # written beside ONNX_FILE by export_onnx
CONVERTER = "facesearch.dlib_onnx/1"  # bump when the produced graph changes
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; keeps older runtimes happy
INPUT_NAME = "chips"
OUTPUT_NAME = "embedding"
INPUT_SIZE = 150

# ------------------------------------------------------------------------------------------
# The network definition (outer-most layer first), as in dlib's dnn_face_recognition_ex.cpp:
#
#   loss_metric<fc_no_bias<128,avg_pool_everything<
#     alevel0<alevel1<alevel2<alevel3<alevel4<
#     max_pool<3,3,2,2,relu<affine<con<32,7,7,2,2,input_rgb_image_sized<150>>>>>>>>>>>>>
#
#   block<N,BN,S,SUB>   = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,S,S,SUB>>>>>
#   ares<N,SUB>         = relu<add_prev1<block<N,affine,1,tag1<SUB>>>>
#   ares_down<N,SUB>    = relu<add_prev2<avg_pool<2,2,2,2,
#                           skip1<tag2<block<N,affine,2,tag1<SUB>>>>>>>
#   alevel0 = ares_down<256>       alevel1 = ares<256,ares<256,ares_down<256>>>
#   alevel2 = ares<128> x2, ares_down<128>
#   alevel3 = ares<64> x3, ares_down<64>
#   alevel4 = ares<32> x3
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    kind: str  # loss_metric fc avg_pool max_pool relu affine con add_prev tag skip input
    args: tuple[int, ...] = ()


def _block(n: int, stride: int) -> list[Spec]:
    return [
        Spec("affine"), Spec("con", (n, 3, 3, 1, 1)),
        Spec("relu"), Spec("affine"), Spec("con", (n, 3, 3, stride, stride)),
    ]


def _ares(n: int) -> list[Spec]:
    return [Spec("relu"), Spec("add_prev", (1,)), *_block(n, 1), Spec("tag", (1,))]


def _ares_down(n: int) -> list[Spec]:
    return [
        Spec("relu"), Spec("add_prev", (2,)), Spec("avg_pool", (2, 2, 2, 2)), Spec("skip", (1,)),
        Spec("tag", (2,)), *_block(n, 2), Spec("tag", (1,)),
    ]


def architecture() -> list[Spec]:
    """dlib's ``anet_type`` as a list of layers, outer-most (loss) first, input last."""
    out = [Spec("loss_metric"), Spec("fc", (128,)), Spec("avg_pool", (0, 0, 1, 1))]
    out += _ares_down(256)                                   # alevel0
    out += _ares(256) + _ares(256) + _ares_down(256)         # alevel1
    out += _ares(128) + _ares(128) + _ares_down(128)         # alevel2
    out += _ares(64) * 3 + _ares_down(64)                    # alevel3
    out += _ares(32) * 3                                     # alevel4
    out += [
        Spec("max_pool", (3, 3, 2, 2)), Spec("relu"), Spec("affine"),
        Spec("con", (32, 7, 7, 2, 2)), Spec("input", (INPUT_SIZE, INPUT_SIZE)),
    ]
    return out


# ------------------------------------------------------------------------------------------
# dlib's serialization primitives
# ------------------------------------------------------------------------------------------

_FLOAT_INF, _FLOAT_NINF = 32000, 32001


class _Reader:
    def __init__(self, data: bytes, where: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.where = where
        self.context = "file start"

    def fail(self, msg: str) -> ModelError:
        return ModelError(
            f"{self.where}: not the dlib ResNet face model we expect ({msg}; "
            f"at byte {self.pos} of {len(self.data)}, in {self.context})"
        )

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"file ends early: needed {n} more bytes")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def _control(self) -> int:
        return self.take(1)[0]

    def sint(self, nbytes: int = 8) -> int:
        """A signed integer of a C++ type ``nbytes`` wide (dlib's ``unpack_int``)."""
        ctrl = self._control()
        size = ctrl & 0x0F
        if size == 0 or size > nbytes:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x} for a {nbytes}-byte integer")
        value = int.from_bytes(self.take(size), "little")
        if value >= 1 << (8 * nbytes - (0 if ctrl & 0x80 else 1)):
            raise self.fail(f"integer {value} does not fit a signed {nbytes}-byte type")
        return -value if ctrl & 0x80 else value

    def uint(self, nbytes: int = 8) -> int:
        """An unsigned integer (dlib masks the three reserved bits 0x70 out)."""
        ctrl = self._control()
        size = ctrl & 0x8F
        if size == 0 or size > nbytes:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x} for an unsigned integer")
        return int.from_bytes(self.take(size), "little")

    def _float_parts(self) -> tuple[int, int]:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail("floating point value in dlib's old ASCII format")
        return self.sint(8), self.sint(2)

    def f32(self) -> np.float32:
        mantissa, exponent = self._float_parts()
        if exponent == _FLOAT_INF:
            return np.float32(np.inf)
        if exponent == _FLOAT_NINF:
            return np.float32(-np.inf)
        if exponent > _FLOAT_NINF:
            return np.float32(np.nan)
        # dlib: std::ldexp((float)mantissa, exponent)
        return np.ldexp(np.float32(mantissa), np.int32(exponent)).astype(np.float32)

    def f64(self) -> float:
        mantissa, exponent = self._float_parts()
        if exponent == _FLOAT_INF:
            return float("inf")
        if exponent == _FLOAT_NINF:
            return float("-inf")
        if exponent > _FLOAT_NINF:
            return float("nan")
        return float(np.ldexp(np.float64(mantissa), np.int32(exponent)))

    def boolean(self) -> bool:
        ch = self.take(1)[0]
        if ch not in (0x30, 0x31):
            raise self.fail(f"bad bool byte 0x{ch:02x}")
        return ch == 0x31

    def string(self, limit: int = 256) -> str:
        n = self.uint()
        if n > limit:
            raise self.fail(f"string of {n} bytes where a short layer name was expected")
        return bytes(self.take(n)).decode("latin-1")

    def expect_version(self, expected: tuple[int, ...], what: str) -> int:
        v = self.sint(4)
        if v not in expected:
            raise self.fail(f"{what} version {v}, expected {' or '.join(map(str, expected))}")
        return v

    def tensor(self) -> np.ndarray:
        self.expect_version((2,), "tensor")
        dims = [self.sint(8) for _ in range(4)]
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor size {dims}")
        count = dims[0] * dims[1] * dims[2] * dims[3]
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def alias(self) -> tuple[int, int, int, int]:
        self.expect_version((1,), "alias_tensor")
        dims = tuple(self.sint(8) for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"negative alias tensor size {dims}")
        return dims  # type: ignore[return-value]

    def name(self, allowed: tuple[str, ...], what: str) -> str:
        s = self.string()
        if s not in allowed:
            raise self.fail(f"{what}: found {s!r}, expected {' or '.join(map(repr, allowed))}")
        return s


# ------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------


@dataclass
class Layer:
    spec: Spec
    version: int = 0  # the add_layer wrapper's version (0 for tag/skip/loss/input)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class DlibNet:
    """The parsed network: ``layers`` outer-most first (loss, fc, ..., con, input)."""

    layers: list[Layer]
    sha256: str

    @property
    def input_layer(self) -> Layer:
        return self.layers[-1]


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _read_loss(r: _Reader) -> dict[str, Any]:
    v = r.name(("loss_metric_", "loss_metric_2"), "loss layer")
    if v == "loss_metric_2":
        return {"margin": float(r.f32()), "dist_thresh": float(r.f32())}
    return {"margin": 0.1, "dist_thresh": 0.75}


def _read_input(r: _Reader, spec: Spec) -> dict[str, Any]:
    v = r.name(("input_rgb_image", "input_rgb_image_sized"), "input layer")
    avg = np.array([r.f32(), r.f32(), r.f32()], dtype=np.float32)
    out: dict[str, Any] = {"avg": avg}
    if v == "input_rgb_image_sized":
        nr, nc = r.uint(), r.uint()
        if (nr, nc) != spec.args:
            raise r.fail(f"input layer is sized {nr}x{nc}, expected {spec.args[0]}x{spec.args[1]}")
    if not np.all(np.isfinite(avg)):
        raise r.fail(f"input channel averages are not finite: {avg.tolist()}")
    return out


def _read_con(r: _Reader, spec: Spec) -> dict[str, Any]:
    v = r.name(("con_4", "con_5", "con_6"), "convolution layer")
    params = r.tensor()
    num_filters = r.sint(8)
    nr, nc = r.sint(8), r.sint(8)
    stride_y, stride_x = r.sint(4), r.sint(4)
    pad_y, pad_x = r.sint(4), r.sint(4)
    filters = r.alias()
    biases = r.alias()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.f64()
    use_bias = r.boolean() if v in ("con_5", "con_6") else True
    use_relu = r.boolean() if v == "con_6" else False
    want_n, want_nr, want_nc, want_sy, want_sx = spec.args
    # dlib's template default padding: 0 for strided convolutions, half the kernel otherwise
    want_py = 0 if want_sy != 1 else want_nr // 2
    want_px = 0 if want_sx != 1 else want_nc // 2
    got = (num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x)
    want = (want_n, want_nr, want_nc, want_sy, want_sx, want_py, want_px)
    if got != want:
        raise r.fail(
            "convolution (filters, rows, cols, stride_y, stride_x, pad_y, pad_x) is "
            f"{got}, expected {want}"
        )
    if filters[0] != num_filters or filters[2:] != (nr, nc):
        raise r.fail(f"convolution filter shape {filters} does not match {num_filters}x?x{nr}x{nc}")
    nbias = _size(biases) if use_bias else 0
    if use_bias and _size(biases) != num_filters:
        raise r.fail(f"convolution has {_size(biases)} biases for {num_filters} filters")
    if params.size != _size(filters) + nbias:
        raise r.fail(
            f"convolution parameter tensor holds {params.size} values, expected "
            f"{_size(filters)} + {nbias}"
        )
    flat = params.reshape(-1)
    w = flat[: _size(filters)].reshape(filters)
    b = flat[_size(filters) :].copy() if use_bias else np.zeros(num_filters, np.float32)
    return {
        "weight": w, "bias": b, "stride": (stride_y, stride_x), "pad": (pad_y, pad_x),
        "relu": use_relu,
    }


def _read_affine(r: _Reader) -> dict[str, Any]:
    """An ``affine`` layer; dlib stores the training-time ``bn_con`` and converts on load."""
    v = r.name(("bn_con2", "affine_", "affine_2"), "affine / batch-norm layer")
    params = r.tensor()
    gshape, bshape = r.alias(), r.alias()
    n = _size(gshape)
    if _size(bshape) != n or params.size != 2 * n:
        raise r.fail(
            f"affine parameters hold {params.size} values for gamma {gshape} beta {bshape}"
        )
    flat = params.reshape(-1)
    gamma, beta = flat[:n].copy(), flat[n:].copy()
    if v == "bn_con2":
        for _ in range(2):  # batch statistics of the last training step (unused at inference)
            r.tensor()
        running_means = r.tensor().reshape(-1)
        running_vars = r.tensor().reshape(-1)
        r.uint()  # num_updates
        r.uint()  # running_stats_window_size
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.f64()
        eps = r.f64()
        if running_means.size != n or running_vars.size != n:
            raise r.fail("batch-norm running statistics do not match its channel count")
        if not (eps > 0 and np.isfinite(eps)):
            raise r.fail(f"batch-norm epsilon {eps}")
        # as dlib's affine_(const bn_&) constructor, in float arithmetic
        g = gamma / np.sqrt(running_vars + np.float32(eps))
        b = beta - g * running_means
        gamma, beta = g.astype(np.float32), b.astype(np.float32)
    else:
        mode = r.sint(4)
        if mode != 0:
            raise r.fail(f"affine layer in mode {mode}, expected CONV_MODE (0)")
        if v == "affine_2" and r.boolean():
            raise r.fail("affine layer is disabled")
    if not (np.all(np.isfinite(gamma)) and np.all(np.isfinite(beta))):
        raise r.fail("affine layer has non-finite parameters")
    return {"gamma": gamma, "beta": beta, "bn": v == "bn_con2"}


def _read_pool(r: _Reader, spec: Spec, kind: str) -> dict[str, Any]:
    r.name((f"{kind}_2",), f"{kind} layer")
    nr, nc = r.sint(8), r.sint(8)
    sy, sx, py, px = r.sint(4), r.sint(4), r.sint(4), r.sint(4)
    want_nr, want_nc, want_sy, want_sx = spec.args
    want_py = 0 if want_sy != 1 else want_nr // 2
    want_px = 0 if want_sx != 1 else want_nc // 2
    got, want = (nr, nc, sy, sx, py, px), (want_nr, want_nc, want_sy, want_sx, want_py, want_px)
    if got != want:
        raise r.fail(
            f"{kind} (rows, cols, stride_y, stride_x, pad_y, pad_x) is {got}, expected {want}"
        )
    return {"window": (nr, nc), "stride": (sy, sx), "pad": (py, px)}


def _read_fc(r: _Reader, spec: Spec) -> dict[str, Any]:
    v = r.name(("fc_2", "fc_3"), "fully connected layer")
    num_outputs, num_inputs = r.uint(), r.uint()
    params = r.tensor()
    wshape, bshape = r.alias(), r.alias()
    bias_mode = r.sint(4)
    for _ in range(4):
        r.f64()
    use_bias = r.boolean() if v == "fc_3" else True
    if bias_mode != 1:  # FC_NO_BIAS
        raise r.fail(f"fully connected layer bias mode {bias_mode}, expected FC_NO_BIAS (1)")
    if num_outputs != spec.args[0]:
        raise r.fail(f"fully connected layer has {num_outputs} outputs, expected {spec.args[0]}")
    if _size(wshape) != num_inputs * num_outputs or params.size != num_inputs * num_outputs:
        raise r.fail(
            f"fully connected weights {wshape} / params {params.shape} do not match "
            f"{num_inputs}x{num_outputs}"
        )
    del bshape, use_bias  # no bias in FC_NO_BIAS mode whatever the flag says
    return {"weight": params.reshape(num_inputs, num_outputs).copy(), "inputs": num_inputs}


def _read_details(r: _Reader, spec: Spec) -> dict[str, Any]:
    k = spec.kind
    if k == "con":
        return _read_con(r, spec)
    if k == "affine":
        return _read_affine(r)
    if k == "relu":
        v = r.name(("relu_", "relu_2"), "relu layer")
        if v == "relu_2" and r.boolean():
            raise r.fail("relu layer is disabled")
        return {}
    if k == "add_prev":
        r.name(("add_prev_",), "add_prev layer")
        return {}
    if k in ("avg_pool", "max_pool"):
        return _read_pool(r, spec, k)
    if k == "fc":
        return _read_fc(r, spec)
    raise AssertionError(k)


def _read_add_layer_tail(r: _Reader, version: int, with_input: bool) -> None:
    """The bookkeeping fields dlib's add_layer writes after its layer details."""
    for _ in range(3):  # setup called, gradient stale, output/gradient disabled
        r.boolean()
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    if with_input:
        r.tensor()  # grad_final
        if version >= 3:
            r.uint(4)  # sample_expansion_factor
    elif version >= 2:
        r.tensor()  # params_grad


def parse_dlib_resnet(dat_path: Path) -> DlibNet:
    """Read ``dlib_face_recognition_resnet_model_v1.dat``; raises ModelError on anything odd."""
    dat_path = Path(dat_path)
    try:
        data = dat_path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read dlib model {dat_path}: {e.strerror or e}") from None
    if data[:3] == b"BZh":
        raise ModelError(f"{dat_path}: bzip2-compressed; decompress it first")
    r = _Reader(data, str(dat_path))
    arch = architecture()
    layers = [Layer(s) for s in arch]
    try:
        # add_loss_layer: version, loss details, then the network (outer-most first)
        r.context = "layer 0 (loss_metric)"
        r.expect_version((1,), "add_loss_layer")
        layers[0].data = _read_loss(r)
        # headers of every wrapper, outer to inner
        for i in range(1, len(arch) - 1):
            s = arch[i]
            r.context = f"layer {i} ({s.kind}{s.args or ''})"
            if s.kind in ("tag", "skip"):
                r.expect_version((1,), f"add_{s.kind}_layer")
            elif i == len(arch) - 2:  # the add_layer holding the input layer
                layers[i].version = r.expect_version((2, 3), "add_layer (input)")
            else:
                layers[i].version = r.expect_version((1, 2), "add_layer")
        # the innermost add_layer: input layer, its own details, its bookkeeping
        i_con, i_in = len(arch) - 2, len(arch) - 1
        r.context = f"layer {i_in} (input)"
        layers[i_in].data = _read_input(r, arch[i_in])
        r.context = f"layer {i_con} (con{arch[i_con].args})"
        layers[i_con].data = _read_details(r, arch[i_con])
        _read_add_layer_tail(r, layers[i_con].version, with_input=True)
        # unwind: each add_layer's details and bookkeeping, inner to outer
        for i in range(i_con - 1, 0, -1):
            s = arch[i]
            if s.kind in ("tag", "skip"):
                continue
            r.context = f"layer {i} ({s.kind}{s.args or ''})"
            layers[i].data = _read_details(r, s)
            _read_add_layer_tail(r, layers[i].version, with_input=False)
    except (ValueError, OverflowError) as e:  # defensive: the reader raises ModelError itself
        raise r.fail(str(e)) from None
    if r.pos != len(data):
        r.context = "after the last layer"
        raise r.fail(f"{len(data) - r.pos} unexpected trailing bytes")
    return DlibNet(layers=layers, sha256=hashlib.sha256(data).hexdigest())


# ------------------------------------------------------------------------------------------
# ONNX graph
# ------------------------------------------------------------------------------------------


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count: dict[str, int] = {}

    def uid(self, base: str) -> str:
        n = self.count.get(base, 0)
        self.count[base] = n + 1
        return f"{base}_{n}"

    def const(self, base: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.uid(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = output or self.uid(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.uid(f"n_{op}"), **attrs))
        return out


def _pool_out(n: int, window: int, stride: int, pad: int) -> int:
    return 1 + (n + 2 * pad - window) // stride


def build_onnx(net: DlibNet, source_name: str = "") -> Any:
    """An ``onnx.ModelProto`` computing the same function as dlib's network."""
    from onnx import TensorProto, helper

    g = _GraphBuilder()
    layers = list(reversed(net.layers))  # input first
    avg = layers[0].data["avg"]
    x = g.node("Sub", [INPUT_NAME, g.const("rgb_average", avg.reshape(1, 3, 1, 1))])
    x = g.node("Mul", [x, g.const("inv256", np.array(1.0 / 256.0, dtype=np.float32))])
    shape = (3, INPUT_SIZE, INPUT_SIZE)  # (k, nr, nc) of the current value
    tags: dict[int, tuple[str, tuple[int, int, int]]] = {}
    i = 1
    while i < len(layers) - 1:  # layers[-1] is the loss
        lay = layers[i]
        kind, d = lay.spec.kind, lay.data
        if kind == "con":
            w = d["weight"].astype(np.float64)
            b = d["bias"].astype(np.float64)
            if w.shape[1] != shape[0]:
                raise ModelError(
                    f"convolution expects {w.shape[1]} input channels, network has {shape[0]}"
                )
            # fold a following affine (dlib: y = gamma * conv(x) + beta) into the convolution
            if i + 1 < len(layers) and layers[i + 1].spec.kind == "affine" and not d["relu"]:
                a = layers[i + 1].data
                if a["gamma"].size != w.shape[0]:
                    raise ModelError("affine layer size does not match the convolution before it")
                gam = a["gamma"].astype(np.float64)
                w = w * gam[:, None, None, None]
                b = b * gam + a["beta"].astype(np.float64)
                i += 1
            (sy, sx), (py, px) = d["stride"], d["pad"]
            kh, kw = w.shape[2], w.shape[3]
            x = g.node(
                "Conv",
                [
                    x,
                    g.const("conv_w", w.astype(np.float32)),
                    g.const("conv_b", b.astype(np.float32)),
                ],
                kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px],
            )
            shape = (w.shape[0], _pool_out(shape[1], kh, sy, py), _pool_out(shape[2], kw, sx, px))
            if d["relu"]:
                x = g.node("Relu", [x])
        elif kind == "affine":  # not preceded by a convolution (does not happen in anet_type)
            gam = d["gamma"].reshape(1, -1, 1, 1)
            x = g.node("Mul", [x, g.const("affine_gamma", gam)])
            x = g.node("Add", [x, g.const("affine_beta", d["beta"].reshape(1, -1, 1, 1))])
        elif kind == "relu":
            x = g.node("Relu", [x])
        elif kind in ("max_pool", "avg_pool"):
            (wy, wx), (sy, sx), (py, px) = d["window"], d["stride"], d["pad"]
            if wy == 0 and wx == 0 and py == 0 and px == 0:  # *_pool_everything
                x = g.node("GlobalAveragePool" if kind == "avg_pool" else "GlobalMaxPool", [x])
                shape = (shape[0], 1, 1)
            else:
                wy, wx = wy or shape[1], wx or shape[2]
                if kind == "max_pool":
                    # dlib's max ignores padded cells; Pad-free MaxPool does the same
                    x = g.node("MaxPool", [x], kernel_shape=[wy, wx], strides=[sy, sx],
                               pads=[py, px, py, px])
                else:
                    # dlib's mean is over the in-image part of the window
                    x = g.node("AveragePool", [x], kernel_shape=[wy, wx], strides=[sy, sx],
                               pads=[py, px, py, px], count_include_pad=0)
                shape = (shape[0], _pool_out(shape[1], wy, sy, py), _pool_out(shape[2], wx, sx, px))
        elif kind == "tag":
            tags[lay.spec.args[0]] = (x, shape)
        elif kind == "skip":
            if lay.spec.args[0] not in tags:
                raise ModelError(f"skip layer refers to tag{lay.spec.args[0]}, not defined")
            x, shape = tags[lay.spec.args[0]]
        elif kind == "add_prev":
            other, oshape = tags[lay.spec.args[0]]
            full = tuple(max(a, b) for a, b in zip(shape, oshape))
            x = _pad_to(g, x, shape, full)
            other = _pad_to(g, other, oshape, full)
            x = g.node("Add", [x, other])
            shape = full  # type: ignore[assignment]
        elif kind == "fc":
            n_in = _size(shape)
            if n_in != d["inputs"]:
                raise ModelError(
                    f"fully connected layer was trained on {d['inputs']} inputs, "
                    f"the network gives it {n_in}"
                )
            x = g.node("Flatten", [x], axis=1)
            x = g.node("MatMul", [x, g.const("fc_w", d["weight"])], output=OUTPUT_NAME)
            shape = (d["weight"].shape[1], 1, 1)
        else:
            raise ModelError(f"unsupported layer {kind!r}")
        i += 1
    if layers[-2].spec.kind != "fc" or x != OUTPUT_NAME:
        raise ModelError("network does not end in a fully connected layer")
    in_shape = ["N", 3, INPUT_SIZE, INPUT_SIZE]
    inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, in_shape)
    out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", shape[0]])
    graph = helper.make_graph(g.nodes, "dlib_resnet_v1", [inp], [out], initializer=g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="facesearch",
        producer_version=CONVERTER,
        doc_string=(
            "dlib face recognition ResNet v1 converted by facesearch. Input: RGB chips "
            "(dlib get_face_chip, 150x150, padding 0.25) as raw 0..255 float pixels, NCHW. "
            "Output: 128-d embedding, not normalised."
        ),
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model, {"source_file": source_name, "source_sha256": net.sha256, "converter": CONVERTER}
    )
    return model


def _pad_to(g: _GraphBuilder, x: str, shape: tuple[int, ...], full: tuple[int, ...]) -> str:
    """Zero-pad (k, nr, nc) at the end of each axis up to ``full``, as dlib's tt::add does."""
    if tuple(shape) == tuple(full):
        return x
    # pads layout: [N_begin, C_begin, H_begin, W_begin, N_end, C_end, H_end, W_end]
    pads = [0, 0, 0, 0, 0, full[0] - shape[0], full[1] - shape[1], full[2] - shape[2]]
    return g.node("Pad", [x, g.const("pads", np.array(pads, dtype=np.int64))], mode="constant")


# ------------------------------------------------------------------------------------------
# export + manifest
# ------------------------------------------------------------------------------------------


def _sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def manifest_path_for(onnx_path: Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def export_onnx(dat_path: Path, out_path: Path) -> Path:
    """Convert the dlib model at ``dat_path`` to ONNX at ``out_path`` (plus a manifest beside it).

    Both files are written atomically; the manifest (``<out_path stem>.json``) is written last.
    Returns ``out_path``.
    """
    dat_path, out_path = Path(dat_path), Path(out_path)
    net = parse_dlib_resnet(dat_path)
    model = build_onnx(net, source_name=dat_path.name)
    blob = model.SerializeToString(deterministic=True)
    _atomic_write(out_path, blob)
    manifest = {
        "id": MODEL_ID,
        "family": "embedder",
        "runtime": "onnx",
        "description": (
            "dlib's ResNet-29 face embedder (dlib-resnet-v1) converted to ONNX by facesearch; "
            "input raw 0..255 RGB pixels of dlib 150x150 chips, output 128-d (not normalised)"
        ),
        "files": [{"name": out_path.name, "path": out_path.name, "sha256": _sha256_bytes(blob)}],
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "alignment": "dlib-chip-150-0.25",
        "embedding_dim": 128,
        "metric": "cosine",
        "mean": 0.0,
        "std": 1.0,
        "color": "RGB",
        "layout": "NCHW",
        "license": "CC0-1.0",
        "commercial_use": True,
        "converted_from": {"file": dat_path.name, "sha256": net.sha256},
        "converter": CONVERTER,
    }
    text = json.dumps(manifest, indent=2) + "\n"
    _atomic_write(manifest_path_for(out_path), text.encode("utf-8"))
    return out_path


def source_dat() -> tuple[Path, str]:
    """The installed dlib model file (checked against the bundled manifest's sha256)."""
    from facesearch.models.manifest import ModelRegistry

    m = ModelRegistry().get(SOURCE_MODEL_ID)
    f = m.files[0]
    path = m.verify()[f.name]
    return path, f.sha256


def _reusable(manifest_path: Path, source_sha: str) -> bool:
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
        if data.get("converted_from", {}).get("sha256") != source_sha:
            return False
        if data.get("converter") != CONVERTER:
            return False
        f = data["files"][0]
        onnx_path = manifest_path.parent / f["path"]
        from facesearch.models.manifest import file_sha256

        return onnx_path.is_file() and file_sha256(onnx_path) == str(f["sha256"]).lower()
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return False


def ensure_onnx(home: Path) -> Path:
    """The manifest of the ONNX conversion in ``home/models``, converting on first use.

    A previous conversion is reused when its manifest records the same source sha256 (and
    converter version) and its ``.onnx`` file still matches the recorded sha256.
    """
    models = Path(home) / "models"
    manifest_path = models / MANIFEST_FILE
    dat, sha = source_dat()
    if _reusable(manifest_path, sha):
        return manifest_path
    out = export_onnx(dat, models / ONNX_FILE)
    assert manifest_path_for(out) == manifest_path  # nosec B101 - an invariant of our own file layout
    return manifest_path
