"""Checks run before training or evaluation starts, so that bad settings fail in seconds with a
message naming the problem instead of minutes later inside Detectron2."""

import os

from detectron2.data import MetadataCatalog

from .amp import amp_dtype

__all__ = ["check_amp", "check_dataset_classes", "check_weights"]


def check_dataset_classes(cfg, eval_only: bool = False):
    """Fail if a dataset's class count differs from ``MODEL.SOLO.NUM_CLASSES``.

    Checks the test datasets, and the training datasets unless ``eval_only``.
    """
    for name in (*(() if eval_only else cfg.DATASETS.TRAIN), *cfg.DATASETS.TEST):
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.SOLO.NUM_CLASSES:
            raise ValueError(
                f"dataset {name!r} has {len(classes)} classes but MODEL.SOLO.NUM_CLASSES is "
                f"{cfg.MODEL.SOLO.NUM_CLASSES}; set MODEL.SOLO.NUM_CLASSES {len(classes)}"
            )


def check_weights(cfg):
    """Fail if ``MODEL.WEIGHTS`` names a local file that does not exist (URLs are fetched by
    the checkpointer)."""
    path = cfg.MODEL.WEIGHTS
    if path and "://" not in path and not os.path.isfile(path):
        hint = ""
        if "torchvision" in os.path.basename(path):
            hint = " (make it with tools/convert_torchvision_resnet.py, see README)"
        raise FileNotFoundError(f"MODEL.WEIGHTS file {path!r} does not exist{hint}")


def check_amp(cfg):
    """Fail if the mixed precision asked for cannot run on ``MODEL.DEVICE`` (float16 needs CUDA;
    bfloat16 runs on the CPU and CUDA), or ``SOLVER.AMP.PRECISION`` is unknown."""
    amp_dtype(cfg)
