"""Training and evaluation engine: the trainer, the process launcher and the pre-flight checks
of ``train_net.py``."""

from .launch import launch
from .preflight import check_amp, check_dataset_classes, check_weights
from .trainer import Trainer, create_ddp_model

__all__ = [
    "Trainer",
    "check_amp",
    "check_dataset_classes",
    "check_weights",
    "create_ddp_model",
    "launch",
]
