"""Tests for registering the shapes datasets with Detectron2 and loading them."""

import importlib
import os
import uuid

import pytest
import torch

import solo_d2  # noqa: F401  (compat shims before detectron2)
from detectron2.config import get_cfg
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_train_loader,
)
from detectron2.structures import BitMasks, BoxMode, PolygonMasks
from solo_d2.data import SHAPES_CLASSES, register_shapes_datasets

SIZE = 64


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """Fresh ``<prefix>_train`` (4 images) / ``<prefix>_val`` (2) rooted in tmp_path.

    The root (``<datasets root>/<prefix>``) is set after registering: it is resolved when a
    split is first loaded.
    """
    prefix = f"test_shapes_{uuid.uuid4().hex[:8]}"
    names = register_shapes_datasets(num_train=4, num_val=2, image_size=SIZE, prefix=prefix)
    monkeypatch.setenv("SOLO_D2_DATASETS", str(tmp_path / "datasets"))
    yield names, tmp_path / "datasets" / prefix
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_registration_is_lazy_and_get_generates(registered):
    (train, val), root = registered
    assert train.endswith("_train") and val == train[: -len("_train")] + "_val"
    assert train in DatasetCatalog.list() and val in DatasetCatalog.list()
    assert not root.exists()  # registering costs no disk work
    dicts = DatasetCatalog.get(val)
    assert len(dicts) == 2
    assert (root / "annotations" / "instances_val.json").is_file()
    assert not (root / "annotations" / "instances_train.json").exists()
    assert len(DatasetCatalog.get(train)) == 4


def test_dataset_dicts(registered):
    (train, _), root = registered
    dicts = DatasetCatalog.get(train)
    assert len(dicts) == 4
    num_anns = 0
    for d in dicts:
        assert os.path.isfile(d["file_name"])
        assert os.path.dirname(d["file_name"]) == str(root / "train")
        assert (d["height"], d["width"]) == (SIZE, SIZE)
        for ann in d["annotations"]:
            num_anns += 1
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert len(ann["bbox"]) == 4
            assert 0 <= ann["category_id"] < len(SHAPES_CLASSES)
            assert ann["iscrowd"] == 0
            assert isinstance(ann["segmentation"], list) and ann["segmentation"]
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
    assert num_anns > 0


def test_metadata(registered):
    (train, val), root = registered
    for name, split in ((train, "train"), (val, "val")):
        meta = MetadataCatalog.get(name)
        # available before the json is read
        assert meta.thing_classes == list(SHAPES_CLASSES)
        assert meta.evaluator_type == "coco"
        assert not hasattr(meta, "json_file")  # the root is not known before the first load
        DatasetCatalog.get(name)
        assert meta.json_file == str(root / "annotations" / f"instances_{split}.json")
        assert meta.image_root == str(root / split)
    DatasetCatalog.get(train)  # load_coco_json sets consistent metadata
    meta = MetadataCatalog.get(train)
    assert meta.thing_classes == list(SHAPES_CLASSES)
    assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(len(SHAPES_CLASSES))}


def test_registering_again_is_a_no_op(registered):
    (train, val), root = registered
    loader = DatasetCatalog[train]  # DatasetCatalog is a dict of name -> loader
    prefix = train[: -len("_train")]
    assert register_shapes_datasets(prefix=prefix, num_train=1, num_val=1) == (train, val)
    assert DatasetCatalog[train] is loader
    assert len(DatasetCatalog.get(val)) == 2  # still the original parameters


def test_explicit_root_is_fixed_at_registration(tmp_path):
    prefix = f"test_shapes_{uuid.uuid4().hex[:8]}"
    train, val = register_shapes_datasets(tmp_path / "here", 1, 1, SIZE, prefix=prefix)
    try:
        assert MetadataCatalog.get(val).json_file == str(
            tmp_path / "here" / "annotations" / "instances_val.json"
        )
        assert os.path.dirname(DatasetCatalog.get(val)[0]["file_name"]) == str(
            tmp_path / "here" / "val"
        )
    finally:
        for name in (train, val):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_datasets_root_follows_the_environment_then_the_working_directory(tmp_path, monkeypatch):
    from solo_d2.data import default_datasets_root

    monkeypatch.delenv("SOLO_D2_DATASETS", raising=False)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_datasets_root() == str(tmp_path / "datasets")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    assert default_datasets_root() == str(tmp_path / "d2")
    monkeypatch.setenv("SOLO_D2_DATASETS", str(tmp_path / "solo"))
    assert default_datasets_root() == str(tmp_path / "solo")


def test_default_names_and_builtin_coco_registered():
    import solo_d2.data

    names = DatasetCatalog.list()
    assert "shapes_train" in names and "shapes_val" in names
    assert MetadataCatalog.get("shapes_train").thing_classes == list(SHAPES_CLASSES)
    assert MetadataCatalog.get("shapes_val").evaluator_type == "coco"
    assert "coco_2017_val" in names and "coco_2017_train" in names
    assert MetadataCatalog.get("coco_2017_val").evaluator_type == "coco"
    importlib.reload(solo_d2.data)  # importing (registering) twice must not raise


def _cfg(mask_format):
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = mask_format
    cfg.INPUT.MIN_SIZE_TRAIN = (SIZE,)
    cfg.INPUT.MAX_SIZE_TRAIN = 2 * SIZE
    return cfg


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_dataset_mapper(registered, mask_format):
    (train, _), _ = registered
    mapper = DatasetMapper(_cfg(mask_format), is_train=True)
    for d in DatasetCatalog.get(train)[:2]:
        out = mapper(d)
        image, inst = out["image"], out["instances"]
        assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
        n = len(d["annotations"])
        assert len(inst) == n
        assert inst.gt_boxes.tensor.shape == (n, 4)
        assert inst.gt_classes.shape == (n,)
        assert len(inst.gt_masks) == n
        masks_cls = PolygonMasks if mask_format == "polygon" else BitMasks
        assert isinstance(inst.gt_masks, masks_cls)
        if mask_format == "bitmask":
            assert inst.gt_masks.tensor.shape == (n, SIZE, SIZE)
            assert (inst.gt_masks.tensor.flatten(1).sum(1) > 0).all()


def test_train_loader_batch(registered):
    (train, _), _ = registered
    cfg = _cfg("bitmask")
    cfg.DATASETS.TRAIN = (train,)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    batch = next(iter(build_detection_train_loader(cfg)))
    assert len(batch) == 2
    for item in batch:
        assert item["image"].shape[0] == 3
        inst = item["instances"]
        assert len(inst) > 0
        assert len(inst.gt_boxes) == len(inst.gt_classes) == len(inst.gt_masks)
        assert int(inst.gt_classes.max()) < len(SHAPES_CLASSES)
