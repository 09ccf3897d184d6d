"""Datasets for solo_d2. Importing this registers ``shapes_train`` / ``shapes_val``.

COCO 2017 (``coco_2017_train`` etc.) is registered by Detectron2's own builtin datasets.
"""

from .coco import register_coco_dataset
from .shapes import (
    SHAPES_CLASSES,
    default_datasets_root,
    generate_shapes_dataset,
    register_shapes_datasets,
)

__all__ = [
    "register_coco_dataset",
    "SHAPES_CLASSES",
    "default_datasets_root",
    "generate_shapes_dataset",
    "register_shapes_datasets",
]

register_shapes_datasets()
