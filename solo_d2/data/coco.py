"""Registration of custom COCO-format datasets, with clear errors for bad files."""

import json
import os

__all__ = ["register_coco_dataset"]


def register_coco_dataset(name: str, json_file: str, image_root: str) -> list:
    """Register a COCO-format instance-segmentation dataset under ``name``.

    Like Detectron2's ``register_coco_instances``, but checks the files first and sets
    ``thing_classes`` (category names ordered by id, as ``load_coco_json`` maps them) right
    away, so the class count can be checked against the model before any data is loaded.
    Returns the class names.
    """
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"dataset {name!r}: annotation file {json_file!r} does not exist")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"dataset {name!r}: image folder {image_root!r} does not exist")
    try:
        with open(json_file, "r", encoding="utf-8") as f:
            categories = json.load(f)["categories"]
        classes = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"dataset {name!r}: {json_file!r} is not a COCO instances file with 'categories' ({e})"
        ) from e
    if not classes:
        raise ValueError(f"dataset {name!r}: {json_file!r} has no categories")
    if name in DatasetCatalog.list():
        raise ValueError(f"dataset name {name!r} is already registered; choose another name")
    register_coco_instances(name, {"thing_classes": classes}, json_file, image_root)
    return classes
