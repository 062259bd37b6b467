"""MTCNN's R-Net and O-Net crops made on the device: OpenCV's ``INTER_AREA`` resize of each box
(with black outside the image), as two matrix products per image.

``cv2.resize(patch, (S, S), interpolation=cv2.INTER_AREA)`` is separable: every output row is a
weighted sum of source rows and every output column a weighted sum of source columns. The
weights depend only on the patch length and ``S`` (OpenCV's resize.cpp):

* shrinking on both axes (the area path): output pixel ``s`` covers source ``[s*k, (s+1)*k)``
  with ``k = length / S``; whole pixels weigh ``1/k``, the partial ones at the two ends their
  covered fraction (fractions under 1e-3 are dropped, as OpenCV does);
* growing on either axis (OpenCV then uses its linear path with "area" coefficients on both
  axes): two taps ``sx = floor(s / r)`` and ``sx + 1`` with ``r = S / length``,
  ``f = (s + 1) - (sx + 1) / r`` taken modulo 1 (0 when not positive), weights ``1 - f`` and
  ``f``, clamped at the last pixel; OpenCV rounds these weights to 11 bits, as done here.

A box is placed in image coordinates, so a source row or column outside the image simply has no
weight: it is black in OpenCV's padded patch. Then ``crop = round(Wy @ image @ Wx^T)`` per box,
batched over an image's boxes. The area path equals OpenCV up to float summation order (a value
exactly between two levels may round the other way); the linear path can differ by one level
where OpenCV's fixed-point arithmetic rounds differently. Either way the networks see what the
CPU path gives them to within one grey level (tests/unit/test_torch_models.py).
"""
from __future__ import annotations

from typing import Any

import numpy as np

_COEF_SCALE = 2048.0  # OpenCV's INTER_RESIZE_COEF_SCALE (11 bits) for 8-bit linear resizing


def axis_weights(start: Any, length: Any, size: int, full: int, shrink: Any) -> Any:
    """(n, size, full) float64 weights: for each box (its first source index ``start`` and
    ``length`` along this axis, in image coordinates) the contribution of each image index to
    each of the ``size`` outputs. ``shrink`` (n,) bool: the area path (both axes shrink)."""
    import torch

    dev = start.device
    n = start.shape[0]
    L = length.to(torch.float64)[:, None, None]                       # (n, 1, 1)
    s = torch.arange(size, device=dev, dtype=torch.float64)[None, :, None]  # (1, S, 1)
    t = (torch.arange(full, device=dev, dtype=torch.float64)[None, None, :]
         - start.to(torch.float64)[:, None, None])                   # (n, 1, F): index in the patch

    # area path (every division tensor by tensor: PyTorch divides by a Python number through its
    # reciprocal, which can move a floor() by one pixel against OpenCV's double arithmetic)
    S_ = torch.full_like(L, float(size))
    one = torch.ones_like(L)
    k = L / S_
    f1 = s * k
    f2 = f1 + k
    cell = torch.minimum(k, L - f1)
    s2 = torch.minimum(torch.floor(f2), L - 1)
    s1 = torch.minimum(torch.ceil(f1), s2)
    head = torch.where((s1 - f1 > 1e-3) & (t == s1 - 1), ((s1 - f1) / cell).float().double(), 0.0)
    body = torch.where((t >= s1) & (t < s2), (torch.ones_like(cell) / cell).float().double(), 0.0)
    tail_w = torch.minimum(torch.minimum(f2 - s2, torch.ones_like(f2)), cell) / cell
    tail = torch.where((f2 - s2 > 1e-3) & (t == s2), tail_w.float().double(), 0.0)
    area = head + body + tail

    # linear path ("area" coefficients), OpenCV's growing case
    inv = S_ / L
    scale = one / inv
    sx = torch.floor(s * scale)
    fx = ((s + 1) - (sx + 1) * inv).float().double()
    fx = torch.where(fx <= 0, torch.zeros_like(fx), fx - torch.floor(fx))
    last = sx >= L - 1
    fx = torch.where(last, torch.zeros_like(fx), fx)
    sx = torch.where(last, L - 1, sx)
    a0 = torch.round((1 - fx) * _COEF_SCALE) / _COEF_SCALE
    a1 = torch.round(fx * _COEF_SCALE) / _COEF_SCALE
    sx1 = torch.minimum(sx + 1, L - 1)
    linear = torch.where(t == sx, a0, 0.0) + torch.where(t == sx1, a1, 0.0)

    w = torch.where(shrink[:, None, None], area, linear)
    inside = (t >= 0) & (t < L)
    return torch.where(inside, w, 0.0).reshape(n, size, full)


def crop_resize(image: Any, boxes: np.ndarray, size: int) -> Any:
    """(n, size, size, 3) float32 crops of integer boxes ``[x1, y1, x2, y2]`` (may reach outside
    the image) of ``image``, a (H, W, 3) float32 tensor of 0..255 values on the device; each crop
    resized like ``cv2.resize(..., INTER_AREA)`` and rounded to whole levels."""
    import torch

    dev = image.device
    H, W = int(image.shape[0]), int(image.shape[1])
    b = torch.as_tensor(np.asarray(boxes[:, :4], dtype=np.int64), device=dev)
    x1, y1 = b[:, 0], b[:, 1]
    w, h = b[:, 2] - x1, b[:, 3] - y1
    shrink = (w >= size) & (h >= size)
    wy = axis_weights(y1, h, size, H, shrink).float()  # (n, S, H)
    wx = axis_weights(x1, w, size, W, shrink).float()  # (n, S, W)
    rows = torch.einsum("nsh,hwc->nswc", wy, image)     # (n, S, W, 3)
    out = torch.einsum("nswc,ntw->nstc", rows, wx)      # (n, S, S, 3)
    return torch.round(out).clamp_(0, 255)


def crop_cost(h: int, w: int, n: int, size: int) -> int:
    """Multiply-adds of :func:`crop_resize` for ``n`` boxes of an ``h`` x ``w`` image."""
    return n * size * w * 3 * (h + size)
