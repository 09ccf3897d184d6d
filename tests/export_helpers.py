"""Helpers shared by the export tests: small detecting models, synthetic pictures, eager
outputs and the comparison of detections."""

import importlib.util
import os

import numpy as np
import torch

from conftest import REPO
from solo_d2.export import export_onnx, export_torchscript, load_torchscript
from solo_d2.export.verify import match_detections

MODELS = ["SOLO", "Decoupled_SOLO", "Decoupled_SOLO_Light", "SOLOv2"]
# The shapes settings these tests were calibrated with (256 px, GroupNorm, grids for 256 px):
# with them the random-weight models below give 5-20 well-separated detections per image.
SHAPES_256 = ["INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "256"]
# the ResNet-18-FPN and head widths these models were made with (the quick configs: 16 and 32)
SHAPES_256_MODEL = ["MODEL.BASIC_RESNET.WIDTH", "64", "MODEL.FPN.OUT_CHANNELS", "64"]
SHAPES_256_MODEL += ["MODEL.SOLO.FEAT_CHANNELS", "64", "MODEL.SOLO.KERNEL_CHANNELS", "64"]
SHAPES_256_MODEL += ["MODEL.SOLO.MASK_FEATURE_CHANNELS", "64"]
SHAPES_256_MODEL += ["MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN", "MODEL.SOLO.NORM", "GN"]
SHAPES_256_MODEL += ["MODEL.SOLO.NUM_GRIDS", "[24, 20, 14, 10, 8]"]
SHAPES_256_MODEL += [
    "MODEL.SOLO.SCALE_RANGES",
    "[[1, 32], [16, 64], [32, 128], [64, 256], [128, 512]]",
]


def synthetic_image(height, width, seed):
    """A BGR uint8 picture: a colour gradient with a few discs of random colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255.0 / width, yy * 255.0 / height, np.full((height, width), 90.0)], -1)
    for _ in range(6):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        radius = rng.integers(8, max(height, width) // 3)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


def as_input(image):
    """The graph input (Float[3, H, W]) of an image that needs no resize (RGB configs)."""
    return torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))).float()


def make_detecting(model, cate_bias=-3.5):
    """Random weights detect nothing (category prior 0.01 < 0.1 score threshold): give the
    category and mask outputs fixed random weights that yield ~5-20 detections per image at the
    default thresholds (``cate_bias`` sets how many). Few candidates keep near-equal scores of
    overlapping masks rare: their order, and so Matrix NMS, would depend on float rounding."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.head.named_parameters():
            if name.startswith("cate_pred"):
                std, bias = 0.05, cate_bias
            elif name.startswith(("mask_preds", "kernel_pred")):
                std, bias = 1.0, 0.0
            else:
                continue
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
            else:
                param.fill_(bias)
    return model


def calibrate_batch_norm(model, images):
    """Give the BatchNorm layers of a random-weight ``model`` the statistics of ``images`` (as
    training would), so that in eval mode they normalise; ``model`` stays in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the images
        norm.train()
    with torch.no_grad():
        for image in images:
            model([{"image": image}])
    for norm in norms:
        norm.eval()
    return model


def eager_outputs(model, image):
    with torch.no_grad():
        instances = model([{"image": image}])[0]["instances"]
    return [
        instances.pred_masks,
        instances.scores,
        instances.pred_classes,
        instances.pred_boxes.tensor,
    ]


def assert_same_detections(expected, got, what):
    report = match_detections(expected, got, score_tol=1e-4, min_iou=0.99)
    assert report["ok"], f"{what}: {report}"
    return report


def assert_exports_like_eager(model, image, folder, what, min_detections=3):
    """Export ``model`` (eval mode) to ONNX and TorchScript in ``folder``, traced on ``image``
    (Float[3, H, W]), and check that ONNX Runtime and TorchScript give eager's detections of
    it, of which there must be at least ``min_detections``. Returns the ONNX file's path."""
    import onnxruntime as ort

    expected = eager_outputs(model, image)
    assert len(expected[1]) >= min_detections, f"{what}: the test model should detect something"
    path = export_onnx(model, str(folder / "model.onnx"), image)
    got = ort.InferenceSession(path).run(None, {"image": image.numpy()})
    assert_same_detections(expected, got, f"{what} ONNX")
    module, _ = load_torchscript(export_torchscript(model, str(folder / "model.ts"), image))
    with torch.no_grad():
        assert_same_detections(expected, module(image), f"{what} TorchScript")
    return path


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
