"""SCRFD face detector (InsightFace's ``scrfd_500m_bnkps``) on ONNX Runtime.

The weights are InsightFace's and licensed for non-commercial research use only; they belong
to the opt-in "insightface-research" model pack (the licence gate lives elsewhere: this class
only runs the model it is given).

What the graph looks like, read from the ONNX file and checked on the sample photos shipped
with the weights and on the dev set:

* one input ``(N, 3, H, W)`` float32, batch and spatial dimensions dynamic; pixels RGB,
  normalised as ``(v - 127.5) / 128``. H and W must be multiples of 32;
* nine outputs: scores, box distances and keypoint distances for the strides 8, 16 and 32
  (in that order, named ``score_8 .. kps_32``), shaped ``(N, A, 1)``, ``(N, A, 4)`` and
  ``(N, A, 10)`` with ``A = (H / s) * (W / s) * 2``. Rows run over the feature map row by row
  (y, then x) with the 2 anchors of one location next to each other. Scores are already
  sigmoid probabilities;
* the anchor centre of location ``(x, y)`` at stride ``s`` is ``(x * s, y * s)`` (no half-cell
  offset); box outputs are the distances ``(left, top, right, bottom)`` from the centre and
  keypoint outputs 5 ``(dx, dy)`` offsets from it, all in units of the stride.

Every image is letterboxed: resized, keeping its aspect ratio, so that its longer side fills
the ``input_size`` square, placed in the top-left corner and padded with black. Coordinates
map back by the exact per-axis resize factors, so boxes and landmarks land on the original
image. Boxes are handled as float ``[x1, y1, x2, y2]`` with ``x2``/``y2`` exclusive.

SCRFD does not find a face that fills most of its input (a tight face crop, upscaled to the
canvas: none of the dev set's 94 crops of 150 x 150 px is found that way, all are when fitted
into at most ~400 px of the 640 canvas). An image with no face after the first run is therefore
run once more, fitted into half the canvas (``retry_large_faces``); only such images pay.

``detect_batch`` runs up to ``max_batch`` letterboxed images in one ONNX call (the graph's batch
dimension is dynamic; a graph with a fixed batch falls back to one image per call). On CPU this
saves nothing measurable; it is there for GPU providers.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from facesearch.errors import ModelError
from facesearch.models.manifest import ModelManifest
from facesearch.models.detections import as_rgb_image, nms, to_faces
from facesearch.types import DetectedFace

_STRIDES = (8, 16, 32)
_ANCHORS = 2  # anchors per feature-map location
_PRE_NMS_TOP_K = 5000  # candidates per image kept (best scores first) before NMS


def _normalise(batch: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 RGB -> ``(N, 3, H, W)`` float32, ``(v - 127.5) / 128``."""
    out = batch.astype(np.float32)
    out -= 127.5
    out *= 0.0078125
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def letterbox(
    image: np.ndarray, size: int, fit: int | None = None
) -> tuple[np.ndarray, float, float]:
    """Resize ``image`` keeping its aspect ratio so that its longer side is ``fit`` pixels
    (default: ``size``), into the top-left of a ``size`` x ``size`` black canvas. Returns the
    canvas and the factors ``(fx, fy)`` that map canvas coordinates back to the image
    (``x_image = x_canvas * fx``)."""
    h, w = image.shape[:2]
    fit = size if fit is None else min(fit, size)
    scale = min(fit / w, fit / h)
    nw = min(size, max(1, int(round(w * scale))))
    nh = min(size, max(1, int(round(h * scale))))
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    if (nw, nh) == (w, h):
        canvas[:h, :w] = image
    else:
        interp = cv2.INTER_AREA if nw < w else cv2.INTER_LINEAR
        canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=interp)
    return canvas, w / nw, h / nh


class ScrfdDetector:
    """SCRFD detector: boxes, scores and 5 landmarks (left eye, right eye, nose, mouth left,
    mouth right; "left" is the point with the smaller x in the image).

    The model is loaded (and its sha256 checked) on first use, not at construction.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        providers: list[str] | None = None,
        threads: int = 1,
        input_size: int = 640,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        max_batch: int = 8,
        retry_large_faces: bool = True,
    ) -> None:
        if input_size < 32 or input_size % 32:
            raise ValueError("input_size must be a positive multiple of 32")
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError("score_threshold must be between 0 and 1")
        if not 0.0 < nms_threshold <= 1.0:
            raise ValueError("nms_threshold must be in (0, 1]")
        self.manifest = manifest
        self.id = manifest.id
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.threads = int(threads)
        self.input_size = int(input_size)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_batch = max(1, int(max_batch))
        self.retry_large_faces = bool(retry_large_faces)
        self._lock = threading.Lock()
        self._session: Any = None
        self._input_name = ""
        self._dynamic_batch = False
        self._centres = {
            s: self._anchor_centres(self.input_size // s, self.input_size // s, s) for s in _STRIDES
        }

    # ------------------------------------------------------------------ session

    def _sess(self) -> Any:
        sess = self._session
        if sess is not None:
            return sess
        with self._lock:
            if self._session is None:
                path = self.manifest.verify()[self.manifest.files[0].name]
                import onnxruntime as ort

                opts = ort.SessionOptions()
                if self.threads > 0:
                    opts.intra_op_num_threads = self.threads
                    opts.inter_op_num_threads = 1
                try:
                    sess = ort.InferenceSession(
                        str(path), sess_options=opts, providers=self.providers
                    )
                except Exception as e:  # onnxruntime raises its own exception types
                    raise ModelError(f"model {self.id!r}: cannot load {path}: {e}") from e
                inputs, outputs = sess.get_inputs(), sess.get_outputs()
                if len(inputs) != 1 or len(outputs) != 3 * len(_STRIDES):
                    raise ModelError(
                        f"model {self.id!r}: expected 1 input and {3 * len(_STRIDES)} outputs, "
                        f"got {len(inputs)} and {len(outputs)}"
                    )
                self._input_name = inputs[0].name
                self._dynamic_batch = not isinstance(inputs[0].shape[0], int)
                self._session = sess
            return self._session

    @property
    def dynamic_batch(self) -> bool:
        """Whether the graph accepts several images in one run (loads the model)."""
        self._sess()
        return self._dynamic_batch

    @staticmethod
    def _anchor_centres(fh: int, fw: int, stride: int) -> np.ndarray:
        ys, xs = np.mgrid[:fh, :fw]
        centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
        return np.repeat(centres, _ANCHORS, axis=0)  # (fh * fw * anchors, 2)

    # ------------------------------------------------------------------ public API

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        imgs = [as_rgb_image(im) for im in images]
        if not imgs:
            return []
        self._sess()
        step = self.max_batch if self._dynamic_batch else 1
        out: list[list[DetectedFace]] = []
        for start in range(0, len(imgs), step):
            out.extend(self._detect_group(imgs[start : start + step]))
        return out

    # ------------------------------------------------------------------ internals


    def _detect_group(self, imgs: list[np.ndarray]) -> list[list[DetectedFace]]:
        results = self._run_letterboxed(imgs, self.input_size)
        if self.retry_large_faces:
            # A face that fills most of the canvas (a tight face crop, upscaled to fit) is
            # larger than anything SCRFD was trained on and is not found at all; such images
            # get a second run fitted into half the canvas. Only images with no face pay.
            empty = [i for i, faces in enumerate(results) if not faces]
            if empty:
                again = self._run_letterboxed([imgs[i] for i in empty], self.input_size // 2)
                for i, faces in zip(empty, again):
                    results[i] = faces
        return results

    def _run_letterboxed(self, imgs: list[np.ndarray], fit: int) -> list[list[DetectedFace]]:
        size = self.input_size
        batch = np.empty((len(imgs), size, size, 3), dtype=np.uint8)
        factors = []
        for i, im in enumerate(imgs):
            batch[i], fx, fy = letterbox(im, size, fit)
            factors.append((fx, fy))
        outs = self._sess().run(None, {self._input_name: _normalise(batch)})
        n = len(_STRIDES)
        results = []
        for i, (im, (fx, fy)) in enumerate(zip(imgs, factors)):
            boxes, scores, points = self._decode(
                [o[i] for o in outs[:n]],
                [o[i] for o in outs[n : 2 * n]],
                [o[i] for o in outs[2 * n :]],
            )
            boxes[:, [0, 2]] *= fx
            boxes[:, [1, 3]] *= fy
            points[:, :, 0] *= fx
            points[:, :, 1] *= fy
            results.append(self._to_faces(im, boxes, scores, points))
        return results

    def _decode(
        self, scores: list[np.ndarray], dists: list[np.ndarray], kps: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's raw outputs -> boxes ``(K, 4)``, scores ``(K,)``, landmarks ``(K, 5, 2)``
        in canvas pixels, after the score threshold and NMS, best score first."""
        all_boxes, all_scores, all_points = [], [], []
        for stride, sc, d, k in zip(_STRIDES, scores, dists, kps):
            centres = self._centres[stride]
            sc = sc.reshape(-1)
            if sc.shape[0] != centres.shape[0]:
                raise ModelError(
                    f"model {self.id!r}: stride {stride} has {sc.shape[0]} anchors, "
                    f"expected {centres.shape[0]}"
                )
            idx = np.nonzero(sc >= self.score_threshold)[0]
            if idx.size == 0:
                continue
            c = centres[idx].astype(np.float64)
            d = d.reshape(-1, 4)[idx].astype(np.float64) * stride
            k = k.reshape(-1, 5, 2)[idx].astype(np.float64) * stride
            all_boxes.append(np.hstack([c - d[:, :2], c + d[:, 2:]]))
            all_points.append(c[:, None, :] + k)
            all_scores.append(sc[idx].astype(np.float64))
        if not all_scores:
            return np.empty((0, 4)), np.empty(0), np.empty((0, 5, 2))
        boxes = np.concatenate(all_boxes)
        scores_ = np.concatenate(all_scores)
        points = np.concatenate(all_points)
        if scores_.size > _PRE_NMS_TOP_K:
            top = np.argsort(-scores_, kind="stable")[:_PRE_NMS_TOP_K]
            boxes, scores_, points = boxes[top], scores_[top], points[top]
        keep = nms(boxes, scores_, self.nms_threshold, "union")
        return boxes[keep], scores_[keep], points[keep]

    def _to_faces(
        self, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, points: np.ndarray
    ) -> list[DetectedFace]:
        return to_faces(image, boxes, scores, points, self.id)
