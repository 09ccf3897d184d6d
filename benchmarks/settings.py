"""What the benchmark compares and how long it measures: model names, configs, sizes, repeats."""

import os
from dataclasses import dataclass
from typing import Tuple

__all__ = [
    "REPO",
    "SOLO_CONFIGS",
    "MASK_RCNN",
    "MASK_RCNN_CONFIG",
    "ALL_CHANNEL",
    "MODELS",
    "LABELS",
    "TINY_BACKBONE",
    "TINY_SOLO",
    "SGD",
    "MASKHEAD_BATCH",
    "Settings",
]

#: The repository checkout the benchmark runs from (its ``configs/`` are read from there).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SOLO_CONFIGS = {
    "SOLO": "configs/SOLO_R50_1x.yaml",
    "DecoupledSOLO": "configs/Decoupled_SOLO_R50_1x.yaml",
    "SOLOv2": "configs/SOLOv2_R50_1x.yaml",
}
MASK_RCNN = "MaskRCNN"
MASK_RCNN_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
#: SOLO R50 trained with the original all-channel mask loss (``cases.AllChannelSOLO``).
ALL_CHANNEL = "SOLO-allchannel"
#: Models of the train / infer comparisons (``--models``), in table order.
MODELS = (*SOLO_CONFIGS, MASK_RCNN)
LABELS = {
    "SOLO": "SOLO R50",
    "DecoupledSOLO": "Decoupled SOLO R50",
    "SOLOv2": "SOLOv2 R50",
    MASK_RCNN: "Mask R-CNN R50-FPN",
    ALL_CHANNEL: "SOLO R50, all-channel loss",
}
# --quick: tiny backbones and heads (random weights), as in tests/conftest.py.
TINY_BACKBONE = {
    "MODEL.RESNETS.DEPTH": "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS": "64",
    "MODEL.FPN.OUT_CHANNELS": "32",
}
TINY_SOLO = {
    "MODEL.SOLO.NUM_GRIDS": "[8, 6, 5, 4, 3]",
    "MODEL.SOLO.SCALE_RANGES": "[[1, 24], [12, 48], [24, 96], [48, 192], [96, 2048]]",
    "MODEL.SOLO.NUM_STACKED_CONVS": "1",
    "MODEL.SOLO.FEAT_CHANNELS": "32",
    "MODEL.SOLO.KERNEL_CHANNELS": "32",
    "MODEL.SOLO.MASK_FEATURE_CHANNELS": "32",
}
#: Optimizer of every training step.
SGD = dict(lr=1e-4, momentum=0.9, weight_decay=1e-4)
#: Batch size of the mask-head comparison.
MASKHEAD_BATCH = 2


@dataclass
class Settings:
    """Sizes and repeats of one benchmark run (``--quick`` shrinks everything).

    Sizes are (height, width) in pixels; ``sections`` and ``models`` are names of registered
    sections and of :data:`MODELS`. Written to bench.json as ``settings``.
    """

    device: str
    threads: int
    quick: bool = False
    warmup: int = 1
    repeats: int = 3
    target_repeats: int = 5
    target_size: Tuple[int, int] = (800, 1216)
    target_counts: Tuple[int, ...] = (5, 20, 50)
    train_size: Tuple[int, int] = (512, 683)
    train_instances: int = 10
    train_batches: Tuple[int, ...] = (1, 2)
    infer_size: Tuple[int, int] = (800, 1216)
    candidates: int = 300
    models: Tuple[str, ...] = MODELS
    sections: Tuple[str, ...] = ("targets", "maskhead", "train", "infer")
    memory: bool = True
    accuracy_budget: float = 480.0  # wall-clock seconds: the demo's training budget (fresh clone)
    accuracy_evaluations: int = 2  # half-way and at the end (a Mask R-CNN evaluation: ~18 s)
    output: str = "output/bench"

    @classmethod
    def from_args(cls, args) -> "Settings":
        """Settings of the parsed command line of ``tools/benchmark.py``."""
        settings = cls(device=args.device, threads=args.threads, memory=not args.no_memory)
        if args.quick:
            settings = cls(
                device=args.device,
                threads=args.threads,
                quick=True,
                warmup=0,
                repeats=1,
                target_repeats=1,
                target_size=(128, 128),
                target_counts=(5, 20),
                train_size=(64, 96),
                train_instances=4,
                train_batches=(2,),
                infer_size=(96, 128),
                candidates=50,
                memory=not args.no_memory,
                accuracy_budget=20.0,
                accuracy_evaluations=2,
            )
        for name in ("warmup", "repeats", "target_repeats", "accuracy_budget"):
            if getattr(args, name) is not None:
                setattr(settings, name, getattr(args, name))
        settings.models = tuple(args.models)
        settings.sections = tuple(args.sections)
        settings.output = args.output
        return settings
