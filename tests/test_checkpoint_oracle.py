"""Published-layout checkpoints give the original code's outputs (fixtures made by running it).

``fixtures/checkpoints/original_<kind>.pt`` hold, for each head type, a small random model in
the layout of the released WXinlong/SOLO files and what the original code computed with it on
one image (``make_original_fixtures.py`` there; the original code is not needed here). The
backbone, a seeded torchvision ResNet-18, is rebuilt here rather than stored.
"""

import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conftest import REPO
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from solo_d2 import add_solo_config
from solo_d2.checkpoint import convert_checkpoint

FIXTURES = os.path.join(REPO, "tests", "fixtures", "checkpoints")
HEADS = {
    "solo": "SOLO",
    "decoupled_solo": "DecoupledSOLO",
    "decoupled_solo_light": "DecoupledSOLOLight",
    "solov2": "SOLOv2",
    "solov2_light": "SOLOv2",
}


def load_case(kind):
    return torch.load(os.path.join(FIXTURES, f"original_{kind}.pt"), weights_only=True)


def make_backbone(seed):
    """The fixture's ResNet-18 (its ``backbone_recipe``): seeded init, perturbed BatchNorms."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                m.weight.copy_(1 + 0.1 * torch.randn(c, generator=generator))
                m.bias.copy_(0.1 * torch.randn(c, generator=generator))
    return net


def released_file(case, path):
    """The fixture as a complete released file: its checkpoint plus the rebuilt backbone."""
    backbone = make_backbone(case["backbone_seed"])
    checksum = sum(
        float(t.double().abs().sum())
        for t in backbone.state_dict().values()
        if t.is_floating_point()
    )
    assert checksum == pytest.approx(
        case["backbone_checksum"], rel=1e-9
    ), "torchvision's resnet18 initialisation changed: the fixture's backbone cannot be rebuilt"
    state = dict(case["checkpoint"]["state_dict"])
    state.update({f"backbone.{k}": v for k, v in backbone.state_dict().items() if "fc." not in k})
    torch.save({"meta": case["checkpoint"]["meta"], "state_dict": state}, path)
    return str(path)


def config_for(case, weights=""):
    hp = case["hparams"]
    cfg = get_cfg()
    add_solo_config(cfg)
    v2 = hp["kernel_channels"] is not None
    cfg.merge_from_file(
        os.path.join(REPO, "configs", "SOLOv2_R50_1x.yaml" if v2 else "SOLO_R50_1x.yaml")
    )
    overrides = {
        "MODEL.DEVICE": "cpu",
        "MODEL.WEIGHTS": weights,
        "MODEL.RESNETS.DEPTH": 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
        "MODEL.FPN.OUT_CHANNELS": hp["in_channels"],
        "MODEL.SOLO.HEAD": HEADS[case["kind"]],
        "MODEL.SOLO.NUM_CLASSES": hp["num_classes"],
        "MODEL.SOLO.NUM_GRIDS": hp["num_grids"],
        "MODEL.SOLO.FPN_STRIDES": hp["strides"],
        "MODEL.SOLO.NUM_STACKED_CONVS": hp["stacked_convs"],
        "MODEL.SOLO.FEAT_CHANNELS": hp["feat_channels"],
        # the image is used at its own size (60 x 90): the resize is an identity
        "INPUT.MIN_SIZE_TEST": 60,
        "INPUT.MAX_SIZE_TEST": 1000,
    }
    if v2:
        overrides["MODEL.SOLO.KERNEL_CHANNELS"] = hp["kernel_channels"]
        overrides["MODEL.SOLO.MASK_FEATURE_CHANNELS"] = hp["mask_feature_channels"]
    test_cfg = hp["test_cfg"]
    overrides.update(
        {
            "MODEL.SOLO.SCORE_THRESH_TEST": test_cfg["score_thr"],
            "MODEL.SOLO.MASK_THRESH_TEST": test_cfg["mask_thr"],
            "MODEL.SOLO.UPDATE_THRESH_TEST": test_cfg["update_thr"],
            "MODEL.SOLO.NMS_PRE_TEST": test_cfg["nms_pre"],
            "MODEL.SOLO.NMS_KERNEL": test_cfg["kernel"],
            "MODEL.SOLO.NMS_SIGMA": test_cfg["sigma"],
            "MODEL.SOLO.MAX_PER_IMG": test_cfg["max_per_img"],
        }
    )
    cfg.merge_from_list([str(item) for pair in overrides.items() for item in pair])
    return cfg


def expected_detections(result):
    shape = result["masks_shape"]
    masks = np.unpackbits(result["masks_packed"].numpy(), count=int(np.prod(shape)))
    return torch.from_numpy(masks.reshape(shape).astype(bool)), result["labels"], result["scores"]


def assert_same_detections(instances, result):
    """Same count and classes, scores within 1e-4, every mask IoU >= 0.98."""
    masks, labels, scores = expected_detections(result)
    assert len(instances) == len(labels) > 0
    assert instances.image_size == tuple(masks.shape[1:])
    order = instances.scores.argsort(descending=True, stable=True)
    expected_order = scores.argsort(descending=True, stable=True)
    torch.testing.assert_close(instances.scores[order], scores[expected_order], rtol=0, atol=1e-4)
    assert torch.equal(instances.pred_classes[order], labels[expected_order])
    got, ref = instances.pred_masks[order], masks[expected_order]
    inter = (got & ref).flatten(1).sum(1).float()
    union = (got | ref).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    assert iou.min() >= 0.98, iou.min()


def head_logits(head, outputs, kind):
    """The solo_d2 head's outputs in the original code's form (training-mode logits)."""
    ours = {"cate": outputs.cate_logits}
    if kind == "solo":
        ours["ins"] = [
            F.conv2d(feat, conv.weight, conv.bias)
            for feat, conv in zip(outputs.mask_data, head.mask_preds)
        ]
    elif kind.startswith("decoupled"):
        for axis, index in (("x", 0), ("y", 1)):
            convs = getattr(head, f"mask_preds_{axis}")
            ours[f"ins_{axis}"] = [
                F.conv2d(data[index], conv.weight, conv.bias, padding=1)
                for data, conv in zip(outputs.mask_data, convs)
            ]
    else:
        ours["kernel"] = [data[0] for data in outputs.mask_data]
        ours["mask_feat"] = outputs.mask_data[0][1]
    return ours


@pytest.fixture(scope="module", params=sorted(HEADS))
def case(request):
    return load_case(request.param)


def test_fixture_exercises_every_postprocessing_filter(case):
    counts = case["filter_counts"]
    assert counts["above_score_thr"] > counts["into_matrix_nms"] > counts["above_update_thr"]
    assert counts["returned"] == len(case["results"]["labels"]) >= 10


def test_converted_head_reproduces_the_original_outputs_and_detections(case):
    kind = case["kind"]
    model = build_model(config_for(case)).eval()
    converted = convert_checkpoint(case["checkpoint"]).state_dict
    head_state = {k[len("head.") :]: v for k, v in converted.items() if k.startswith("head.")}
    model.head.load_state_dict(head_state, strict=True)
    with torch.no_grad():
        outputs = model.head(case["features"])
        ours = head_logits(model.head, outputs, kind)
    for name, expected in case["head_outputs"].items():
        expected = expected if isinstance(expected, list) else [expected]
        got = ours[name] if isinstance(ours[name], list) else [ours[name]]
        assert len(got) == len(expected), name
        for level, (g, e) in enumerate(zip(got, expected)):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-5, msg=f"{name} level {level}")
    # post-processing of these outputs, at the image size and rescaled to another output size
    for key in ("results", "results_rescaled"):
        output_size = tuple(case[key]["masks_shape"][1:])
        with torch.no_grad():
            instances = model.inference_single(outputs, 0, case["pad_shape"], (60, 90), output_size)
        assert_same_detections(instances, case[key])


def _converter_cli():
    path = os.path.join(REPO, "tools", "convert_solo_checkpoint.py")
    spec = importlib.util.spec_from_file_location("convert_solo_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_released_file_through_model_weights_and_through_the_converter(case, tmp_path):
    released = released_file(case, tmp_path / "released.pth")
    image_bgr = case["image"].numpy()[:, :, ::-1]
    # 1. MODEL.WEIGHTS names the file as released: converted on load, loaded strictly
    predictor = DefaultPredictor(config_for(case, released))
    assert_same_detections(predictor(image_bgr)["instances"], case["results"])
    # 2. the converter, checked against the config, then the converted file
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(config_for(case).dump())
    converted = str(tmp_path / "converted.pth")
    assert _converter_cli().main([released, converted, "--config", str(cfg_file)]) == 0
    assert torch.load(converted, weights_only=True)["__author__"] == "solo_d2 converter (original)"
    predictor = DefaultPredictor(config_for(case, converted))
    assert_same_detections(predictor(image_bgr)["instances"], case["results"])


@pytest.fixture(scope="module")
def tiny_shapes_dataset(tmp_path_factory):
    from solo_d2.data import generate_shapes_dataset

    root = str(tmp_path_factory.mktemp("shapes4"))
    return generate_shapes_dataset(root, "val", num_images=4, image_size=64)


@pytest.mark.parametrize("mode", ["eval-only", "fine-tune"])
def test_train_net_takes_a_released_file_as_model_weights(mode, tiny_shapes_dataset, tmp_path):
    import subprocess
    import sys

    case = load_case("solo")
    released = released_file(case, tmp_path / "released.pth")
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(config_for(case).dump())
    json_file, image_dir = tiny_shapes_dataset
    args = [sys.executable, "train_net.py", "--config-file", str(cfg_file)]
    args += ["--coco-dataset", "tiny4", json_file, image_dir, "DATASETS.TEST", '("tiny4",)']
    args += ["MODEL.WEIGHTS", released, "OUTPUT_DIR", str(tmp_path / "out")]
    if mode == "eval-only":
        args.insert(4, "--eval-only")
    else:
        args += [
            "DATASETS.TRAIN",
            '("tiny4",)',
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.IMS_PER_BATCH",
            "2",
        ]
        args += ["INPUT.MIN_SIZE_TRAIN", "(64,)", "DATALOADER.NUM_WORKERS", "0"]
    proc = subprocess.run(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "from the original layout" in proc.stdout
    assert "does not match" not in proc.stdout  # every key loaded
    assert "[solo_d2] tiny4: mask AP" in proc.stdout
