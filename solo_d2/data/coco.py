"""Registration of custom COCO-format datasets, with clear errors for bad files."""

import json
import os

__all__ = ["register_coco_dataset"]


def register_coco_dataset(name: str, json_file: str, image_root: str) -> list:
    """Register a COCO-format instance-segmentation dataset under ``name``.

    Like Detectron2's ``register_coco_instances``, but checks the files first, sets
    ``thing_classes`` (category names ordered by id, as ``load_coco_json`` maps them) right
    away, so the class count can be checked against the model before any data is loaded, and
    keeps annotation ids (problems found in a record name them). Returns the class names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

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
    # as register_coco_instances, keeping the annotation ids for the messages of
    # solo_d2.data.validation
    DatasetCatalog.register(
        name, lambda: load_coco_json(json_file, image_root, name, extra_annotation_keys=["id"])
    )
    MetadataCatalog.get(name).set(
        thing_classes=classes, json_file=json_file, image_root=image_root, evaluator_type="coco"
    )
    return classes
