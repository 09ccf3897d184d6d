"""tools/convert_torchvision_resnet.py: every torchvision ResNet weight lands in the backbone."""

import os
import subprocess
import sys

import pytest
import torch
import torchvision

from conftest import REPO, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model


@pytest.mark.parametrize("depth", [18, 50])
def test_converted_weights_load_into_the_solo_backbone(depth, tmp_path):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    out = tmp_path / "converted.pkl"
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "convert_torchvision_resnet.py"),
            "--weights",
            str(tmp_path / "tv.pth"),
            str(out),
        ],
        check=True,
        stdout=subprocess.PIPE,
    )
    extra = [
        "MODEL.RESNETS.DEPTH",
        str(depth),
        "MODEL.RESNETS.NORM",
        "FrozenBN",
        "MODEL.WEIGHTS",
        str(out),
    ]
    if depth >= 50:
        extra += ["MODEL.RESNETS.RES2_OUT_CHANNELS", "256"]
    model = build_model(tiny_cfg(extra=extra))
    DetectionCheckpointer(model).load(str(out))
    bottom_up = model.backbone.bottom_up
    assert torch.equal(bottom_up.stem.conv1.weight, reference.conv1.weight)
    assert torch.equal(bottom_up.res5[-1].conv2.weight, reference.layer4[-1].conv2.weight)
    assert torch.equal(
        bottom_up.res3[0].shortcut.norm.running_var, reference.layer2[0].downsample[1].running_var
    )
    # the ImageNet forward of the converted backbone equals torchvision's up to res5
    x = torch.randn(1, 3, 64, 64)
    reference.eval()
    with torch.no_grad():
        expected = reference.layer4(
            reference.layer3(
                reference.layer2(
                    reference.layer1(
                        reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
                    )
                )
            )
        )
        got = bottom_up(x)["res5"]
    assert torch.allclose(got, expected, atol=1e-4)
