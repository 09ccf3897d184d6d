"""Training and evaluation engine: the trainer and the pre-flight checks of ``train_net.py``."""

from .preflight import check_dataset_classes, check_devices, check_weights
from .trainer import Trainer

__all__ = ["Trainer", "check_dataset_classes", "check_devices", "check_weights"]
