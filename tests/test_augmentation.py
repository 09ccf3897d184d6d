"""Tests for solo_d2's extra training augmentations (INPUT.RANDOM_ROTATION_ANGLES)."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

import solo_d2  # noqa: F401  (compat shims before detectron2)
from detectron2.config import get_cfg
from detectron2.structures import BoxMode
from solo_d2 import add_solo_config
from solo_d2.data import SOLODatasetMapper
from solo_d2.data.augmentation import build_extra_train_augmentations

HEIGHT, WIDTH = 40, 56  # not square: a quarter turn swaps them


@pytest.fixture
def record(tmp_path):
    """One image with a rectangle and a triangle; pixel values encode position, so any wrong
    orientation of the image shows."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    rectangle = [4.0, 6.0, 20.0, 6.0, 20.0, 30.0, 4.0, 30.0]
    triangle = [30.0, 4.0, 50.0, 4.0, 30.0, 20.0]
    annotations = [
        {"bbox": [4, 6, 16, 24], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1,
         "segmentation": [rectangle], "iscrowd": 0},
        {"bbox": [30, 4, 20, 16], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2,
         "segmentation": [triangle], "iscrowd": 0},
    ]
    return {"file_name": str(path), "image_id": 7, "height": HEIGHT, "width": WIDTH,
            "annotations": annotations}


def _cfg(angles, mask_format="bitmask"):
    cfg = get_cfg()
    add_solo_config(cfg)
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = mask_format
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.MIN_SIZE_TRAIN = (HEIGHT,)  # the resize keeps the image as it is
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TEST = HEIGHT
    cfg.INPUT.RANDOM_ROTATION_ANGLES = angles
    return cfg


def _masks(instances, height, width):
    masks = instances.gt_masks
    if hasattr(masks, "tensor"):
        return masks.tensor
    from detectron2.structures import BitMasks

    return BitMasks.from_polygon_masks(masks, height, width).tensor


@pytest.mark.parametrize("mask_format", ["bitmask", "polygon"])
@pytest.mark.parametrize("angle", [90, 180, 270])
def test_rotation_moves_image_masks_and_boxes_together(record, angle, mask_format):
    plain = SOLODatasetMapper(_cfg([], mask_format), True)(copy.deepcopy(record))
    turned = SOLODatasetMapper(_cfg([angle], mask_format), True)(copy.deepcopy(record))
    quarter_turns = angle // 90
    expected_image = torch.rot90(plain["image"], quarter_turns, dims=(1, 2))  # counter-clockwise
    assert turned["image"].shape == expected_image.shape
    assert torch.equal(turned["image"], expected_image)
    a, b = plain["instances"], turned["instances"]
    assert torch.equal(a.gt_classes, b.gt_classes)
    height, width = turned["image"].shape[1:]
    expected_masks = torch.rot90(_masks(a, HEIGHT, WIDTH), quarter_turns, dims=(1, 2))
    turned_masks = _masks(b, height, width)
    # bit masks turn exactly; polygons are rasterised after turning, which may move an edge
    # pixel of the triangle's hypotenuse
    differing = (turned_masks != expected_masks).flatten(1).sum(1)
    assert (differing <= (0 if mask_format == "bitmask" else 4)).all(), differing
    for box, mask in zip(b.gt_boxes.tensor, turned_masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=box.dtype)
        assert torch.allclose(box, tight, atol=1.0), (box, tight)


def test_rotation_draws_every_angle_and_only_in_training(record):
    mapper = SOLODatasetMapper(_cfg([0, 90, 180, 270]), True)
    shapes = {tuple(mapper(copy.deepcopy(record))["image"].shape) for _ in range(40)}
    assert shapes == {(3, HEIGHT, WIDTH), (3, WIDTH, HEIGHT)}
    test_mapper = SOLODatasetMapper(_cfg([90]), False)
    plain_test = SOLODatasetMapper(_cfg([]), False)
    assert torch.equal(
        test_mapper(copy.deepcopy(record))["image"], plain_test(copy.deepcopy(record))["image"]
    )


def test_rotation_off_and_bad_angles():
    assert build_extra_train_augmentations(_cfg([])) == []
    assert build_extra_train_augmentations(_cfg([0])) == []
    for bad in ([45], [0, 90, 30.5], ["90"]):
        with pytest.raises(ValueError, match="INPUT.RANDOM_ROTATION_ANGLES"):
            build_extra_train_augmentations(_cfg(bad))
