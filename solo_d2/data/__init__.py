"""Datasets for solo_d2. Importing this registers the names ``shapes_train`` / ``shapes_val``
(default layout) and ``shapes_dense_train`` / ``shapes_dense_val`` (15-30 small shapes per
image); each is generated when first loaded.

COCO 2017 (``coco_2017_train`` etc.) is registered by Detectron2's own builtin datasets.
"""

from .coco import register_coco_dataset
from .mapper import SOLODatasetMapper
from .shapes import (
    SHAPES_CLASSES,
    default_datasets_root,
    generate_shapes_dataset,
    register_shapes_datasets,
)
from .validation import DatasetError, validate_dataset_dicts

__all__ = [
    "DatasetError",
    "SOLODatasetMapper",
    "register_coco_dataset",
    "SHAPES_CLASSES",
    "default_datasets_root",
    "generate_shapes_dataset",
    "register_shapes_datasets",
    "validate_dataset_dicts",
]

register_shapes_datasets()
register_shapes_datasets(prefix="shapes_dense", layout="dense_small")
