"""Checks run before training or evaluation starts, so that bad settings fail in seconds with a
message naming the problem instead of minutes later inside Detectron2."""

import os

from detectron2.data import MetadataCatalog

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
    """Fail if mixed precision is asked for on the CPU.

    ``SOLVER.AMP.ENABLED`` selects Detectron2's ``AMPTrainer``, which uses CUDA's float16
    autocast and gradient scaler; on the CPU, train in float32.
    """
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise ValueError(
            f"SOLVER.AMP.ENABLED needs CUDA (Detectron2's AMPTrainer uses torch.cuda.amp), but "
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r}: set SOLVER.AMP.ENABLED False on the CPU"
        )
