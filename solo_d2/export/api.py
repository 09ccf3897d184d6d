"""Config-level export: build and load the model, pick the sample input, write the files."""

import logging
import os
from typing import Dict, Optional

import numpy as np
import torch

from .onnx import DEFAULT_OPSET, export_onnx
from .predictor import resized_shape
from .torchscript import export_torchscript

__all__ = [
    "FORMATS",
    "build_export_model",
    "export_from_config",
    "export_metadata",
    "sample_image",
    "preprocess_bgr",
]

logger = logging.getLogger(__name__)

#: --format -> file name in the output folder.
FORMATS = {"onnx": "model.onnx", "torchscript": "model.ts"}


def build_export_model(cfg) -> torch.nn.Module:
    """The SOLO model of ``cfg`` on the CPU in eval mode, with ``MODEL.WEIGHTS`` loaded (strictly,
    published checkpoints converted on load, as ``DefaultPredictor`` does)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialised weights")
    return model


def export_metadata(cfg) -> Dict:
    """What a runner needs besides the graph: pre-processing and class names (JSON-able)."""
    from detectron2.data import MetadataCatalog

    class_names = None
    if cfg.DATASETS.TEST:
        class_names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes", None)
    return {
        "format_version": 1,
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "head": cfg.MODEL.SOLO.HEAD,
        "num_classes": int(cfg.MODEL.SOLO.NUM_CLASSES),
        "class_names": list(class_names) if class_names else None,
        "inputs": {"image": "Float[3, H, W], 0..255, INPUT.FORMAT channel order, resized"},
        "outputs": {
            "masks": "Bool[N, H, W]",
            "scores": "Float[N]",
            "classes": "Int64[N]",
            "boxes": "Float[N, 4] XYXY",
        },
    }


def preprocess_bgr(cfg, bgr_image: np.ndarray) -> torch.Tensor:
    """DefaultPredictor's input for a BGR uint8 image: Float[3, h, w] (channel order of
    ``INPUT.FORMAT``, resized with ``ResizeShortestEdge`` of the test sizes)."""
    from detectron2.data import transforms as T

    image = bgr_image[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else bgr_image
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(image).apply_image(np.ascontiguousarray(image))
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))


def sample_image(cfg, path: Optional[str] = None) -> torch.Tensor:
    """The trace input: ``path`` read and pre-processed as DefaultPredictor does, or a fixed
    pseudo-random image of a 480 x 640 picture's test size. Any content works: the graph does not
    depend on the detections of the sample."""
    if path:
        import cv2

        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot read --sample-image {path!r}")
        return preprocess_bgr(cfg, image)
    height, width = resized_shape(480, 640, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, height, width), generator=generator).to(torch.float32)


def export_from_config(
    cfg,
    fmt: str,
    output_dir: str,
    sample_image_path: Optional[str] = None,
    opset: int = DEFAULT_OPSET,
    model: Optional[torch.nn.Module] = None,
) -> str:
    """Export the model of ``cfg`` (``MODEL.WEIGHTS`` loaded, or ``model``) as ``fmt`` ("onnx" or
    "torchscript") to ``output_dir/model.onnx`` / ``model.ts``; returns the file's path."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}, use one of {sorted(FORMATS)}")
    if cfg.MODEL.SOLO.KEEP_PEAK_COMPONENT_TEST:
        raise ValueError(
            "MODEL.SOLO.KEEP_PEAK_COMPONENT_TEST True has no graph form (a flood fill run until "
            "it converges): export with MODEL.SOLO.KEEP_PEAK_COMPONENT_TEST False (the exported "
            "masks then keep their stray parts)"
        )
    model = build_export_model(cfg) if model is None else model.eval()
    image = sample_image(cfg, sample_image_path)
    path = os.path.join(output_dir, FORMATS[fmt])
    metadata = export_metadata(cfg)
    if fmt == "onnx":
        metadata["opset"] = opset
        return export_onnx(model, path, image, opset=opset, metadata=metadata)
    return export_torchscript(model, path, image, metadata=metadata)
