"""Every released SOLO model converts into its solo_d2 config with zero unmatched keys.

The source files are rebuilt from the architectures (tests/checkpoint_sources.py) on the "meta"
device: key names and shapes of the real files, no memory.
"""

import os
import re

import pytest
import torch

import checkpoint_sources as sources
from conftest import REPO
from detectron2.config import get_cfg
from solo_d2 import add_solo_config
from solo_d2.checkpoint import RELEASED_MODELS, convert_checkpoint
from solo_d2.checkpoint.verify import compare_with_model, model_state_shapes

ORIGINAL_NAMES = {  # mmdetection model -> the original model with the same architecture
    "solo_r50_fpn_1x_coco": "SOLO_R50_1x",
    "solo_r50_fpn_3x_coco": "SOLO_R50_3x",
    "decoupled-solo_r50_fpn_1x_coco": "Decoupled_SOLO_R50_1x",
    "decoupled-solo_r50_fpn_3x_coco": "Decoupled_SOLO_R50_3x",
    "decoupled-solo-light_r50_fpn_3x_coco": "Decoupled_SOLO_Light_R50_3x",
    "solov2_r50_fpn_1x_coco": "SOLOv2_R50_1x",
    "solov2_r50_fpn_ms-3x_coco": "SOLOv2_R50_3x",
    "solov2_r101_fpn_ms-3x_coco": "SOLOv2_R101_3x",
    "solov2_r101-dcn_fpn_ms-3x_coco": "SOLOv2_R101_DCN_3x",
    "solov2_x101-dcn_fpn_ms-3x_coco": "SOLOv2_X101_DCN_3x",
    "solov2-light_r18_fpn_ms-3x_coco": "SOLOv2_Light_448_R18_3x",
    "solov2-light_r34_fpn_ms-3x_coco": "SOLOv2_Light_448_R34_3x",
    "solov2-light_r50_fpn_ms-3x_coco": "SOLOv2_Light_448_R50_3x",
}


def load_cfg(config):
    cfg = get_cfg()
    add_solo_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    return cfg


def released_file(model, shapes):
    if model.source == "original":
        return sources.original_checkpoint(model.name, model.backbone, model.dcn)
    if model.source == "mmdet":
        return sources.mmdet_checkpoint(ORIGINAL_NAMES[model.name], model.backbone, model.dcn)
    backbone = {
        k: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith("backbone.")
    }
    return sources.adelaidet_checkpoint(backbone)


def test_the_zoo_lists_every_published_model():
    counts = {
        s: sum(m.source == s for m in RELEASED_MODELS) for s in ("original", "adelaidet", "mmdet")
    }
    assert counts == {"original": 17, "adelaidet": 2, "mmdet": 13}
    assert set(ORIGINAL_NAMES) == {m.name for m in RELEASED_MODELS if m.source == "mmdet"}
    for model in RELEASED_MODELS:
        assert os.path.isfile(os.path.join(REPO, model.config)), model.config


@pytest.mark.parametrize("model", RELEASED_MODELS, ids=lambda m: f"{m.source}-{m.name}")
def test_released_model_loads_into_its_config_exactly(model):
    shapes = model_state_shapes(load_cfg(model.config))
    checkpoint = released_file(model, shapes)
    converted = convert_checkpoint(checkpoint, "auto", target_shapes=shapes)
    assert converted.source == model.source
    report = compare_with_model(converted.state_dict, shapes)
    assert report.ok, str(report)
    weights = checkpoint.get("state_dict", checkpoint.get("model"))
    assert len(converted.state_dict) + len(converted.dropped) == len(weights)
    assert all(re.fullmatch(r".*num_batches_tracked", k) for k in converted.dropped)
    if model.dcn == "v1":  # every v1 offset conv was padded to the modulated layout
        assert converted.padded_dcn_v1
        assert all(shapes[k][0] == 27 for k in converted.padded_dcn_v1 if "conv2_offset" in k)
    else:
        assert not converted.padded_dcn_v1
    if model.source != "adelaidet":
        assert converted.classes == sources.COCO_CLASSES


def test_model_zoo_doc_lists_every_model_with_url_config_and_ap():
    with open(os.path.join(REPO, "MODEL_ZOO.md"), encoding="utf-8") as f:
        rows = [line for line in f if line.startswith("|")]
    for model in RELEASED_MODELS:
        row = [r for r in rows if model.url in r]
        assert len(row) == 1, model.name
        assert f"`{model.config}`" in row[0] and f"{model.mask_ap:.1f}" in row[0], row[0]
