"""``OnnxPredictor``: run an exported SOLO model like Detectron2's ``DefaultPredictor``.

At run time it needs only ``onnxruntime``, ``numpy`` and Pillow (the resize Detectron2 uses for
uint8 images); it reads its pre-processing (input channel order, test resize) from the
exported model's metadata, not from a config, and imports nothing from solo_d2. It returns a
Detectron2 ``Instances`` when Detectron2 is importable, else a dict of numpy arrays.

Pre-processing is DefaultPredictor's: BGR -> ``INPUT.FORMAT``, ``ResizeShortestEdge``
(``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, bilinear, Pillow), float32 CHW. The graph returns
masks at the resized size; when the image was resized they are pasted back to the original size
by bilinear interpolation of the binary masks (> 0.5), and the boxes are the tight boxes of the
pasted masks. DefaultPredictor pastes the soft masks instead, so mask edges can differ by
about a pixel for resized images; scores and classes are those of the graph.
"""

import json
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "OnnxPredictor",
    "default_session_options",
    "resized_shape",
    "paste_masks",
    "mask_boxes_np",
]

METADATA_KEY = "solo_d2"


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            "running an exported SOLO model needs onnxruntime: pip install 'solo_d2[export]' "
            "(or pip install onnxruntime)"
        ) from e
    return onnxruntime


def default_session_options(threads: Optional[int] = None):
    """ONNX Runtime ``SessionOptions`` for the exported graph: ``threads`` intra-op threads
    (default: ONNX Runtime's), one inter-op thread, sequential execution, and no memory pattern.

    The memory pattern (ONNX Runtime's default) pre-plans one block for the intermediates of the
    shapes it saw; with this graph's dynamic shapes (image size, candidate and detection counts)
    it raised the peak of a SOLO R50 run at 800 x 1216 from 1.0 to 1.3-2.1 GB at the same speed
    (docs/BENCHMARKS.md, export section).
    """
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_mem_pattern = False
    return options


def resized_shape(height: int, width: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """(new_h, new_w) of Detectron2's ``ResizeShortestEdge.get_output_shape``."""
    size = short_edge * 1.0
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def _linear_weights(out_len: int, in_len: int):
    """Source indices and weights of a bilinear (align_corners=False) resize along one axis."""
    scale = in_len / out_len
    src = np.maximum((np.arange(out_len, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_len - 1)
    hi = np.minimum(lo + 1, in_len - 1)
    frac = (src - lo).astype(np.float32)
    return lo, hi, frac


def paste_masks(masks: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bool[N, h, w] -> Bool[N, *size]: bilinear (align_corners=False) resize, then > 0.5."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.astype(bool)
    (y0, y1, fy), (x0, x1, fx) = (
        _linear_weights(size[0], masks.shape[1]),
        _linear_weights(size[1], masks.shape[2]),
    )
    out = np.empty((len(masks), *size), dtype=bool)
    for k, mask in enumerate(masks.astype(np.float32)):
        rows = mask[y0] * (1 - fy)[:, None] + mask[y1] * fy[:, None]
        out[k] = (rows[:, x0] * (1 - fx) + rows[:, x1] * fx) > 0.5
    return out


def mask_boxes_np(masks: np.ndarray) -> np.ndarray:
    """Float32[N, 4] tight XYXY boxes (x2 = max x + 1) of Bool[N, H, W]; zeros if empty."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, mask in enumerate(masks):
        xs, ys = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
        if len(xs):
            boxes[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


class OnnxPredictor:
    """``OnnxPredictor("model.onnx")(bgr_image) -> Instances`` (or a dict of arrays).

    Args:
        path: an ONNX file written by ``tools/export_model.py`` / ``solo_d2.export``.
        providers: ONNX Runtime execution providers (default: CPU).
        session_options: an ``onnxruntime.SessionOptions`` (threads, profiling, ...); default
            :func:`default_session_options`.
        metadata: overrides the pre-processing stored in the model (``input_format``,
            ``min_size_test``, ``max_size_test``).
    """

    def __init__(
        self,
        path: str,
        providers: Optional[Sequence[str]] = None,
        session_options=None,
        metadata: Optional[Dict] = None,
    ):
        ort = _import_onnxruntime()
        try:
            self.session = ort.InferenceSession(
                path,
                sess_options=session_options or default_session_options(),
                providers=list(providers or ["CPUExecutionProvider"]),
            )
        except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
            if "DeformConv" in str(e):
                raise RuntimeError(
                    f"this ONNX Runtime cannot run {path}: its deformable convs (ONNX op "
                    "DeformConv, from torchvision::deform_conv2d) need onnxruntime >= 1.16; or "
                    "export a config without DCN (MODEL.SOLO.DCN_TOWER_LAYERS, "
                    "USE_DCN_IN_MASK_FEATURES, MODEL.RESNETS.DEFORM_ON_PER_STAGE)"
                ) from e
            raise
        stored = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata = json.loads(stored) if stored else {}
        self.metadata.update(metadata or {})
        missing = {"input_format", "min_size_test", "max_size_test"} - set(self.metadata)
        if missing:
            raise ValueError(
                f"{path} has no solo_d2 pre-processing metadata {sorted(missing)}: export it with "
                "tools/export_model.py, or pass metadata={...}"
            )
        self.input_format = self.metadata["input_format"]
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be RGB or BGR, got {self.input_format!r}")
        self.min_size = int(self.metadata["min_size_test"])
        self.max_size = int(self.metadata["max_size_test"])
        self.input_name = self.session.get_inputs()[0].name

    def preprocess(self, original_image: np.ndarray) -> np.ndarray:
        """BGR uint8 [H, W, 3] -> the graph's Float32[3, h, w] input (DefaultPredictor's)."""
        if original_image.dtype != np.uint8 or original_image.ndim != 3:
            raise ValueError(
                f"expected a BGR uint8 image [H, W, 3], got {original_image.dtype} "
                f"{original_image.shape}"
            )
        image = original_image[:, :, ::-1] if self.input_format == "RGB" else original_image
        height, width = image.shape[:2]
        if self.min_size > 0:
            from PIL import Image

            new_h, new_w = resized_shape(height, width, self.min_size, self.max_size)
            resample = getattr(Image, "Resampling", Image).BILINEAR
            pil = Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), resample)
            image = np.asarray(pil)
        return np.ascontiguousarray(image.astype(np.float32).transpose(2, 0, 1))

    def run(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        """The raw graph outputs for a pre-processed Float32[3, h, w] image."""
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(None, {self.input_name: image})))

    def __call__(self, original_image: np.ndarray, return_numpy: bool = False):
        """Detections of a BGR uint8 image at its size: an ``Instances`` with ``pred_masks``,
        ``scores``, ``pred_classes``, ``pred_boxes`` (or, with ``return_numpy`` or without
        Detectron2, a dict with ``masks``, ``scores``, ``classes``, ``boxes``)."""
        height, width = original_image.shape[:2]
        out = self.run(self.preprocess(original_image))
        masks = out["masks"].astype(bool)
        if masks.shape[1:] != (height, width):
            masks = paste_masks(masks, (height, width))
            boxes = mask_boxes_np(masks)
        else:
            boxes = out["boxes"].astype(np.float32)
        result = {
            "masks": masks,
            "scores": out["scores"],
            "classes": out["classes"],
            "boxes": boxes,
        }
        if return_numpy:
            return result
        try:
            import torch
            from detectron2.structures import Boxes, Instances
        except ImportError:
            return result
        instances = Instances((height, width))
        instances.pred_masks = torch.from_numpy(masks)
        instances.scores = torch.from_numpy(result["scores"])
        instances.pred_classes = torch.from_numpy(result["classes"])
        instances.pred_boxes = Boxes(torch.from_numpy(boxes))
        return instances
