"""Tests for the basic-block ResNet-FPN backbone of free width and depth."""

import pytest
import torch

import solo_d2  # noqa: F401  (registers the backbone)
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from solo_d2 import add_solo_config


def backbone_cfg(**basic):
    cfg = get_cfg()
    add_solo_config(cfg)
    cfg.merge_from_file("configs/SOLOv2_shapes_quick.yaml")
    cfg.MODEL.BACKBONE.NAME = "build_basic_resnet_fpn_backbone"
    for key, value in basic.items():
        setattr(cfg.MODEL.BASIC_RESNET, key, value)
    return cfg


def test_width_64_and_two_blocks_per_stage_is_detectron2s_resnet18_fpn():
    ours = build_backbone(backbone_cfg(WIDTH=64, BLOCKS_PER_STAGE=[2, 2, 2, 2]))
    cfg = backbone_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    theirs = build_backbone(cfg)
    shapes = {k: v.shape for k, v in theirs.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == shapes
    ours.load_state_dict(theirs.state_dict())
    ours.eval(), theirs.eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, got = theirs(image), ours(image)
    assert expected.keys() == got.keys() == {"p2", "p3", "p4", "p5", "p6"}
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    assert ours.output_shape() == theirs.output_shape()


def test_width_and_blocks_set_the_channels_and_depth():
    backbone = build_backbone(backbone_cfg(WIDTH=32, BLOCKS_PER_STAGE=[1, 2, 1, 1]))
    bottom_up = backbone.bottom_up
    assert [len(getattr(bottom_up, f"res{i}")) for i in range(2, 6)] == [1, 2, 1, 1]
    assert {f: s.channels for f, s in bottom_up.output_shape().items()} == {
        "res2": 32,
        "res3": 64,
        "res4": 128,
        "res5": 256,
    }
    out = backbone(torch.randn(2, 3, 128, 128))
    # the FPN keeps its channels (the quick configs: 32) and strides
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (2, 32, 32, 32),
        "p3": (2, 32, 16, 16),
        "p4": (2, 32, 8, 8),
        "p5": (2, 32, 4, 4),
        "p6": (2, 32, 2, 2),
    }
    # a quarter of the parameters at half the width
    full = build_backbone(backbone_cfg(WIDTH=64, BLOCKS_PER_STAGE=[1, 2, 1, 1])).bottom_up
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 0.2 < count(bottom_up) / count(full) < 0.3


@pytest.mark.parametrize(
    "basic, message",
    [({"WIDTH": 0}, "WIDTH"), ({"BLOCKS_PER_STAGE": [2, 2, 2]}, "BLOCKS_PER_STAGE")],
)
def test_bad_settings_are_refused_by_name(basic, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(backbone_cfg(**basic), ShapeSpec(channels=3))
