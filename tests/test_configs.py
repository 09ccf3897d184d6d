"""Every config in configs/ builds a model that runs a training step and inference on CPU, and
the config files follow one layout: Base-* roots, one naming scheme, distinct output folders."""

import glob
import os
import re

import pytest
import torch

from conftest import REPO, make_input
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from solo_d2 import add_solo_config
from solo_d2.modeling.heads import SOLO_HEAD_REGISTRY

CONFIG_DIR = os.path.join(REPO, "configs")
ALL_CONFIGS = sorted(
    os.path.relpath(p, CONFIG_DIR)
    for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True)
)
CONFIGS = [c for c in ALL_CONFIGS if not os.path.basename(c).startswith("Base-")]


def load(name):
    cfg = get_cfg()
    add_solo_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, name))
    return cfg


def test_every_issue_config_exists():
    expected = {
        "SOLO_R50_1x",
        "SOLO_R50_3x",
        "SOLO_R101_3x",
        "Decoupled_SOLO_R50_1x",
        "Decoupled_SOLO_R50_3x",
        "Decoupled_SOLO_R101_3x",
        "Decoupled_SOLO_Light_R50_3x",
        "Decoupled_SOLO_Light_DCN_R50_3x",
        "SOLOv2_R50_1x",
        "SOLOv2_R50_3x",
        "SOLOv2_R101_3x",
        "SOLOv2_R101_DCN_3x",
        "SOLOv2_X101_DCN_3x",
        "SOLOv2_Light_448_R18_3x",
        "SOLOv2_Light_448_R34_3x",
        "SOLOv2_Light_448_R50_3x",
        "SOLOv2_Light_512_DCN_R50_3x",
        "SOLO_shapes_quick",
        "Decoupled_SOLO_shapes_quick",
        "Decoupled_SOLO_Light_shapes_quick",
        "SOLOv2_shapes_quick",
    }
    assert expected <= {c[: -len(".yaml")] for c in CONFIGS}


def _base_of(name):
    with open(os.path.join(CONFIG_DIR, name)) as f:
        found = re.search(r'^_BASE_: "(.+)"', f.read(), flags=re.M)
    if not found:
        return None
    return os.path.normpath(os.path.join(os.path.dirname(name), found.group(1)))


def test_base_configs_are_roots_that_only_inherit_other_bases():
    bases = [c for c in ALL_CONFIGS if os.path.basename(c).startswith("Base-")]
    assert "Base-SOLO.yaml" in bases and _base_of("Base-SOLO.yaml") is None
    for name in bases:
        parent = _base_of(name)
        assert parent is None or os.path.basename(parent).startswith("Base-"), (name, parent)
    for name in CONFIGS:  # every concrete config descends from Base-SOLO.yaml
        chain = [name]
        while _base_of(chain[-1]):
            chain.append(_base_of(chain[-1]))
        assert chain[-1] == "Base-SOLO.yaml", chain


FAMILY = r"(SOLO|Decoupled_SOLO|Decoupled_SOLO_Light|SOLOv2|SOLOv2_Light(_\d+)?)"
NAME_SCHEME = re.compile(
    rf"(AdelaiDet/)?{FAMILY}(_DCN)?_(R\d+|X\d+)(_DCN)?_(1x|3x)\.yaml"  # released models
    rf"|{FAMILY}_shapes(_dense)?_quick\.yaml"  # the embedded-data configs
    rf"|Base-{FAMILY}(_shapes_quick)?\.yaml"
)


def test_one_naming_scheme():
    """Model families as published (Decoupled_SOLO_Light, SOLOv2_Light_448, ...), then backbone
    and schedule, or the dataset; the released models keep their published names."""
    assert [c for c in ALL_CONFIGS if not NAME_SCHEME.fullmatch(c)] == []


def test_output_dirs_are_distinct_and_named_after_the_config():
    for name in CONFIGS:
        assert load(name).OUTPUT_DIR == "output/" + name[: -len(".yaml")], name


@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_and_predicts_on_cpu(name):
    cfg = load(name)
    assert cfg.MODEL.META_ARCHITECTURE == "SOLO" and cfg.MODEL.SOLO.HEAD in SOLO_HEAD_REGISTRY
    cfg.MODEL.WEIGHTS = ""  # ImageNet weights are not on this machine
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg)
    num_classes = cfg.MODEL.SOLO.NUM_CLASSES
    inputs = [make_input([[4, 6, 30, 40], [20, 10, 60, 50]], [0, num_classes - 1], seed=1)]
    model.train()
    losses = model(inputs)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        (result,) = model(inputs)
    assert result["instances"].image_size == (64, 80)


def test_published_schedules():
    """Rule S1: lr 0.01 at 16 images, warmup 500 from 1/3, clip 35, 1x = 12, 3x = 36 epochs."""
    for name in ("SOLO_R50_1x.yaml", "SOLOv2_R50_1x.yaml", "Decoupled_SOLO_R50_1x.yaml"):
        cfg = load(name)
        assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH) == (0.01, 16)
        assert cfg.SOLVER.WARMUP_ITERS == 500 and abs(cfg.SOLVER.WARMUP_FACTOR - 1 / 3) < 1e-3
        assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 35.0
        assert cfg.SOLVER.MAX_ITER == 90000 and cfg.SOLVER.STEPS == (67500, 82500)
        assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    cfg = load("SOLOv2_R50_3x.yaml")
    assert cfg.SOLVER.MAX_ITER == 270000 and cfg.SOLVER.STEPS == (202500, 247500)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)


def test_every_solo_config_key_is_used_by_the_code():
    """No dead keys: each MODEL.SOLO key is read somewhere in the package."""
    sources = ""
    for path in glob.glob(os.path.join(REPO, "solo_d2", "**", "*.py"), recursive=True):
        if not path.endswith("config.py"):
            sources += open(path).read()
    cfg = get_cfg()
    add_solo_config(cfg)
    unused = [key for key in cfg.MODEL.SOLO if f".{key}" not in sources]
    assert unused == []


TRAINED_NORMS = ("GN", "BN", "SyncBN", "naiveSyncBN")


def test_configs_trained_from_scratch_train_every_layer():
    """Without pretrained weights nothing may stay frozen (FREEZE_AT 0) and every norm must
    learn (GroupNorm or trained BatchNorm, never FrozenBN, whose statistics would stay those of
    the random initialisation); from-scratch configs also warm up and clip gradients."""
    for name in CONFIGS:
        cfg = load(name)
        if cfg.MODEL.WEIGHTS:
            continue
        assert cfg.MODEL.BACKBONE.FREEZE_AT == 0, name
        assert cfg.MODEL.RESNETS.NORM in TRAINED_NORMS, name
        assert cfg.MODEL.FPN.NORM in TRAINED_NORMS and cfg.MODEL.SOLO.NORM in TRAINED_NORMS, name
        assert cfg.SOLVER.WARMUP_ITERS > 0 and cfg.SOLVER.CLIP_GRADIENTS.ENABLED, name


def test_mask_rcnn_of_the_accuracy_benchmark_shares_backbone_data_and_schedule():
    from benchmarks.accuracy_run import accuracy_config

    solo, rcnn = accuracy_config("SOLOv2"), accuracy_config("MaskRCNN")
    assert rcnn.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert rcnn.MODEL.RESNETS == solo.MODEL.RESNETS and rcnn.MODEL.FPN == solo.MODEL.FPN
    assert rcnn.MODEL.BACKBONE == solo.MODEL.BACKBONE and rcnn.MODEL.WEIGHTS == ""
    assert rcnn.INPUT == solo.INPUT and rcnn.SOLVER == solo.SOLVER
    assert rcnn.DATASETS == solo.DATASETS and rcnn.DATALOADER == solo.DATALOADER
    assert rcnn.MODEL.ROI_HEADS.NUM_CLASSES == solo.MODEL.SOLO.NUM_CLASSES
    assert rcnn.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 512  # the model zoo's, unless tuned
    rois = ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128"]
    dense, solo_dense = accuracy_config("MaskRCNN", rois, "shapes_dense"), accuracy_config(
        "SOLOv2", (), "shapes_dense"
    )
    assert dense.DATASETS.TRAIN == ("shapes_dense_train",) and dense.SOLVER == solo_dense.SOLVER
    assert dense.SOLVER.IMS_PER_BATCH == 2  # the dense case's own batch, shared
    assert dense.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 128
