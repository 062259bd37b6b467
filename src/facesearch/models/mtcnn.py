"""MTCNN face detector (P-Net -> R-Net -> O-Net cascade) on ONNX Runtime.

The three ONNX files are the Keras port of the original Caffe/Matlab MTCNN weights. What the
networks expect, established from the reference conventions and checked on real photos:

* pixels are RGB, normalised as ``(v - 127.5) / 128``;
* every input is *transposed*: the networks were trained on column-major (Matlab) arrays, so
  an image of shape ``(H, W, 3)`` is fed as ``(W, H, 3)``, and the P-Net score/regression
  maps come back as ``(W', H')`` grids;
* regression outputs are ``(dx1, dy1, dx2, dy2)`` as fractions of the box width/height;
  O-Net's 10 landmark outputs are 5 x fractions followed by 5 y fractions of the box.

Boxes are handled internally as float ``[x1, y1, x2, y2]`` in 0-based pixel coordinates with
``x2``/``y2`` exclusive, so the width is ``x2 - x1``.

``detect_batch`` batches across images: P-Net runs once per pyramid level for a group of
images (smaller images are zero-padded to the group's size and the score cells whose 12x12
window reaches into the padding are dropped; :meth:`detect` drops the same edge cells, so both
paths agree), and R-Net and O-Net each run on the crops of all images at once.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from facesearch.errors import ModelError
from facesearch.models.detections import as_rgb_image, nms, to_faces
from facesearch.models.manifest import ModelManifest, ModelRegistry
from facesearch.types import DetectedFace

_PNET_CELL = 12
_PNET_STRIDE = 2
_RNET_SIZE = 24
_ONET_SIZE = 48


def _normalise(pixels: np.ndarray) -> np.ndarray:
    out = pixels.astype(np.float32)
    out -= 127.5
    out *= 0.0078125
    return out


def _apply_regression(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    h = (boxes[:, 3] - boxes[:, 1])[:, None]
    return boxes[:, :4] + reg[:, :4] * np.hstack([w, h, w, h])


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (side = the longer side)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + (w - side) * 0.5
    out[:, 1] = boxes[:, 1] + (h - side) * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _integer_boxes(boxes: np.ndarray) -> np.ndarray:
    """Round boxes to whole pixels (at least 1 px wide and high) for cropping."""
    out = np.round(boxes[:, :4])
    out[:, 2] = np.maximum(out[:, 2], out[:, 0] + 1)
    out[:, 3] = np.maximum(out[:, 3], out[:, 1] + 1)
    return out


def _crop(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Crop an integer box (may reach outside the image; the outside is black) to size x size."""
    h_img, w_img = image.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in box[:4])
    if x1 >= 0 and y1 >= 0 and x2 <= w_img and y2 <= h_img:
        patch = image[y1:y2, x1:x2]
    else:
        patch = np.zeros((y2 - y1, x2 - x1, 3), dtype=np.uint8)
        sx1, sy1 = max(0, x1), max(0, y1)
        sx2, sy2 = min(w_img, x2), min(h_img, y2)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)


def _pyramid_level(made: list[tuple[float, np.ndarray]], scale: float, size: tuple[int, int]) -> np.ndarray:
    """Resize to one pyramid level from the smallest level already made that is at least twice
    as large (area interpolation from >= 2x keeps the quality of resizing from the original
    at a fraction of the cost); remembers the result in ``made``."""
    src = made[0][1]
    for s, pixels in made:
        if s >= 2.0 * scale:
            src = pixels
    out = cv2.resize(src, size, interpolation=cv2.INTER_AREA)
    made.append((scale, out))
    return out


class MtcnnDetector:
    """MTCNN detector: boxes, scores and 5 landmarks (left eye, right eye, nose, mouth left,
    mouth right; "left" is the point with the smaller x in the image).

    Models are loaded (and their sha256 checked) on first use, not at construction.
    """

    def __init__(
        self,
        manifest: ModelManifest | None = None,
        providers: list[str] | None = None,
        threads: int = 1,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
        max_batch: int = 512,
        pnet_max_pixels: int = 8_000_000,
    ) -> None:
        if manifest is None:
            manifest = ModelRegistry().get("mtcnn")
        if len(thresholds) != 3:
            raise ValueError("thresholds must have three values (P-Net, R-Net, O-Net)")
        if not 0.0 < scale_factor < 1.0:
            raise ValueError("scale_factor must be between 0 and 1")
        if min_face_size < 1:
            raise ValueError("min_face_size must be positive")
        self.manifest = manifest
        self.id = manifest.id
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.threads = int(threads)
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        self.max_batch = max(1, int(max_batch))
        self.pnet_max_pixels = int(pnet_max_pixels)
        self._lock = threading.Lock()
        self._nets: dict[str, Any] | None = None

    # ------------------------------------------------------------------ sessions

    def _sessions(self) -> dict[str, Any]:
        nets = self._nets
        if nets is not None:
            return nets
        with self._lock:
            if self._nets is None:
                paths = self.manifest.verify()
                import onnxruntime as ort

                opts = ort.SessionOptions()
                if self.threads > 0:
                    opts.intra_op_num_threads = self.threads
                    opts.inter_op_num_threads = 1
                loaded: dict[str, Any] = {}
                for stage in ("pnet", "rnet", "onet"):
                    path = paths.get(f"{stage}.onnx")
                    if path is None:
                        raise ModelError(f"model {self.id!r}: manifest has no file {stage}.onnx")
                    try:
                        loaded[stage] = ort.InferenceSession(
                            str(path), sess_options=opts, providers=self.providers
                        )
                    except Exception as e:  # onnxruntime raises its own exception types
                        raise ModelError(f"model {self.id!r}: cannot load {path}: {e}") from e
                self._nets = loaded
            return self._nets

    def _run(self, stage: str, x: np.ndarray) -> list[np.ndarray]:
        sess = self._sessions()[stage]
        name = sess.get_inputs()[0].name
        return sess.run(None, {name: x})

    def _run_chunked(self, stage: str, x: np.ndarray) -> list[np.ndarray]:
        parts = [self._run(stage, x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return [np.concatenate([p[k] for p in parts], axis=0) for k in range(len(parts[0]))]

    # ------------------------------------------------------------------ public API

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        imgs = [as_rgb_image(im) for im in images]
        if not imgs:
            return []
        boxes = self._stage_pnet(imgs)
        boxes = self._stage_rnet(imgs, boxes)
        found = self._stage_onet(imgs, boxes)
        return [self._to_faces(im, b, p) for im, (b, p) in zip(imgs, found)]

    # ------------------------------------------------------------------ stages


    def _scales(self, h: int, w: int) -> list[float]:
        m = _PNET_CELL / self.min_face_size
        side = min(h, w) * m
        scales = []
        k = 0
        while side >= _PNET_CELL:
            scales.append(m * self.scale_factor**k)
            side *= self.scale_factor
            k += 1
        return scales

    def _groups(self, shapes: dict[int, tuple[int, int]]) -> list[list[int]]:
        """Group images of one pyramid level for a shared P-Net run (padding wastes < 25%)."""
        order = sorted(shapes, key=lambda i: (shapes[i][0] * shapes[i][1], shapes[i]))
        groups: list[list[int]] = []
        cur: list[int] = []
        mh = mw = area = 0
        for i in order:
            h, w = shapes[i]
            nh, nw = max(mh, h), max(mw, w)
            padded = nh * nw * (len(cur) + 1)
            if cur and (padded > 1.25 * (area + h * w) or padded > self.pnet_max_pixels):
                groups.append(cur)
                cur, mh, mw, area = [], 0, 0, 0
                nh, nw = h, w
            cur.append(i)
            mh, mw, area = nh, nw, area + h * w
        if cur:
            groups.append(cur)
        return groups

    def _stage_pnet(self, imgs: list[np.ndarray]) -> list[np.ndarray]:
        t1 = self.thresholds[0]
        scales = [self._scales(*im.shape[:2]) for im in imgs]
        per_image: list[list[np.ndarray]] = [[] for _ in imgs]
        # scaled copies made so far, per image: (scale, pixels); the original is scale 1
        made: list[list[tuple[float, np.ndarray]]] = [[(1.0, im)] for im in imgs]
        for level in range(max((len(s) for s in scales), default=0)):
            shapes = {}
            for i, im in enumerate(imgs):
                if level < len(scales[i]):
                    s = scales[i][level]
                    h, w = im.shape[:2]
                    shapes[i] = (int(math.ceil(h * s)), int(math.ceil(w * s)))
            for group in self._groups(shapes):
                gh = max(shapes[i][0] for i in group)
                gw = max(shapes[i][1] for i in group)
                levels = [_pyramid_level(made[i], scales[i][level], (shapes[i][1], shapes[i][0]))
                          for i in group]
                reg, prob = self._run("pnet", self._pnet_batch(levels, gh, gw))
                for j, i in enumerate(group):
                    sh, sw = shapes[i]
                    # cells whose 12x12 window lies wholly inside this image
                    nr = (sh - _PNET_CELL) // _PNET_STRIDE + 1
                    nc = (sw - _PNET_CELL) // _PNET_STRIDE + 1
                    score = prob[j, :nc, :nr, 1].T
                    rows, cols = np.nonzero(score >= t1)
                    if rows.size == 0:
                        continue
                    s = scales[i][level]
                    cand = np.empty((rows.size, 9), dtype=np.float64)
                    cand[:, 0] = cols * _PNET_STRIDE / s
                    cand[:, 1] = rows * _PNET_STRIDE / s
                    cand[:, 2] = (cols * _PNET_STRIDE + _PNET_CELL) / s
                    cand[:, 3] = (rows * _PNET_STRIDE + _PNET_CELL) / s
                    cand[:, 4] = score[rows, cols]
                    cand[:, 5:9] = reg[j, cols, rows, :]
                    keep = nms(cand[:, :4], cand[:, 4], 0.5, "union")
                    per_image[i].append(cand[keep])
        out = []
        for cands in per_image:
            if not cands:
                out.append(np.empty((0, 5)))
                continue
            c = np.concatenate(cands, axis=0)
            c = c[nms(c[:, :4], c[:, 4], 0.7, "union")]
            boxes = _square(_apply_regression(c[:, :4], c[:, 5:9]))
            out.append(np.hstack([_integer_boxes(boxes), c[:, 4:5]]))
        return out

    def _pnet_batch(self, levels: list[np.ndarray], gh: int, gw: int) -> Any:
        """P-Net's input for one group: the pyramid levels (uint8 RGB), normalised, transposed
        and zero-padded to the group's (transposed) size ``(len, gw, gh, 3)``."""
        batch = np.zeros((len(levels), gw, gh, 3), dtype=np.float32)
        for j, pixels in enumerate(levels):
            sh, sw = pixels.shape[:2]
            batch[j, :sw, :sh] = _normalise(pixels).transpose(1, 0, 2)
        return batch

    def _crop_batch(self, crops: np.ndarray) -> Any:
        """R-Net's or O-Net's input: uint8 crops ``(n, size, size, 3)``, normalised and
        transposed like the whole-image input of P-Net."""
        return _normalise(crops).transpose(0, 2, 1, 3).copy()

    def _crops(self, imgs: list[np.ndarray], boxes: list[np.ndarray], size: int) -> Any:
        total = sum(len(b) for b in boxes)
        batch = np.empty((total, size, size, 3), dtype=np.uint8)
        k = 0
        for im, bs in zip(imgs, boxes):
            for b in bs:
                batch[k] = _crop(im, b, size)
                k += 1
        return self._crop_batch(batch)

    def _stage_rnet(self, imgs: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        if sum(len(b) for b in boxes) == 0:
            return boxes
        reg, prob = self._run_chunked("rnet", self._crops(imgs, boxes, _RNET_SIZE))
        out = []
        start = 0
        for bs in boxes:
            n = len(bs)
            r, p = reg[start : start + n], prob[start : start + n, 1]
            start += n
            ok = p > self.thresholds[1]
            b, r, p = bs[ok, :4], r[ok], p[ok]
            keep = nms(b, p, 0.7, "union")
            b, r, p = b[keep], r[keep], p[keep]
            refined = _square(_apply_regression(b, r))
            out.append(np.hstack([_integer_boxes(refined), p[:, None]]))
        return out

    def _stage_onet(
        self, imgs: list[np.ndarray], boxes: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        if sum(len(b) for b in boxes) == 0:
            return [(np.empty((0, 5)), np.empty((0, 5, 2))) for _ in boxes]
        reg, marks, prob = self._run_chunked("onet", self._crops(imgs, boxes, _ONET_SIZE))
        out = []
        start = 0
        for bs in boxes:
            n = len(bs)
            r, lm, p = reg[start : start + n], marks[start : start + n], prob[start : start + n, 1]
            start += n
            ok = p > self.thresholds[2]
            b, r, lm, p = bs[ok, :4], r[ok], lm[ok], p[ok]
            w = (b[:, 2] - b[:, 0])[:, None]
            h = (b[:, 3] - b[:, 1])[:, None]
            pts = np.stack([b[:, 0:1] + lm[:, 0:5] * w, b[:, 1:2] + lm[:, 5:10] * h], axis=2)
            final = _apply_regression(b, r)
            keep = nms(final, p, 0.7, "min")
            out.append((np.hstack([final[keep], p[keep, None]]), pts[keep]))
        return out

    # ------------------------------------------------------------------ output

    def _to_faces(self, image: np.ndarray, boxes: np.ndarray, points: np.ndarray) -> list[DetectedFace]:
        return to_faces(image, boxes[:, :4], boxes[:, 4], points, self.id)
