"""Conversion of published SOLO checkpoints: backbone/FPN parity, DCN v1/v2, file layouts,
key bijection for AdelaiDet and mmdetection, loud failures."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

import checkpoint_sources as sources
from conftest import tiny_cfg
from detectron2.layers import ModulatedDeformConv
from detectron2.modeling import build_backbone
from solo_d2.checkpoint import CheckpointConversionError, convert_checkpoint, detect_source
from solo_d2.checkpoint.convert import pad_dcn_v1_offsets
from solo_d2.modeling.layers import ModulatedDeformConv2d

torch.manual_seed(0)


def randomize_(state, generator):
    """Distinct random values everywhere; BatchNorm statistics kept valid (var > 0)."""
    for key, value in state.items():
        if value.is_floating_point():
            value.copy_(torch.randn(value.shape, generator=generator) * 0.1)
            if key.endswith("running_var"):
                value.abs_().add_(0.5)


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_and_mmdet_fpn_match_detectron2_on_p2_to_p6(depth):
    backbone = f"R{depth}"
    resnet = sources.torchvision_backbone(backbone, device="cpu").eval()
    fpn = sources.MMDetV1FPN(sources.resnet_stage_channels(backbone), 64)
    generator = torch.Generator().manual_seed(depth)
    randomize_(resnet.state_dict(), generator)
    randomize_(fpn.state_dict(), generator)
    state = {f"backbone.{k}": v for k, v in resnet.state_dict().items() if "fc." not in k}
    state.update({f"neck.{k}": v for k, v in fpn.state_dict().items()})
    converted = convert_checkpoint({"meta": {}, "state_dict": state})

    extra = ["MODEL.RESNETS.DEPTH", str(depth), "MODEL.RESNETS.NORM", "FrozenBN"]
    extra += ["MODEL.FPN.OUT_CHANNELS", "64", "MODEL.FPN.NORM", ""]
    if depth >= 50:
        extra += ["MODEL.RESNETS.RES2_OUT_CHANNELS", "256"]
    d2_backbone = build_backbone(tiny_cfg(extra=extra)).eval()
    d2_backbone.load_state_dict(
        {k[len("backbone.") :]: v for k, v in converted.state_dict.items()}, strict=True
    )

    x = torch.randn(1, 3, 96, 128, generator=generator)
    with torch.no_grad():
        c = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        features = []
        for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
            c = layer(c)
            features.append(c)
        expected = fpn(features)
        got = d2_backbone(x)
    for level, reference in zip(["p2", "p3", "p4", "p5", "p6"], expected):
        torch.testing.assert_close(got[level], reference, rtol=1e-4, atol=1e-5)


def reference_dcn_v2(x, weight, offset_weight, offset_bias, padding):
    """mmcv's ModulatedDeformConv2dPack: offset conv, chunk(3), cat(o1, o2), sigmoid(mask)."""
    out = F.conv2d(x, offset_weight, offset_bias, padding=padding)
    o1, o2, mask = torch.chunk(out, 3, dim=1)
    offset = torch.cat((o1, o2), dim=1)
    return deform_conv2d(x, offset, weight, padding=padding, mask=mask.sigmoid())


@pytest.mark.parametrize("kernel", [3, 1])
def test_dcn_v1_padded_into_the_modulated_conv_is_exact(kernel):
    """Exact up to float rounding: the offset conv of 3 k^2 channels may be summed in another
    order than one of 2 k^2 (oneDNN picks its kernel by shape and thread count)."""
    generator = torch.Generator().manual_seed(kernel)
    x = torch.randn(2, 8, 9, 11, generator=generator)
    weight = torch.randn(6, 8, kernel, kernel, generator=generator)
    offset_weight = torch.randn(2 * kernel**2, 8, kernel, kernel, generator=generator) * 0.3
    offset_bias = torch.randn(2 * kernel**2, generator=generator)
    padding = kernel // 2
    offset = F.conv2d(x, offset_weight, offset_bias, padding=padding)
    expected = deform_conv2d(x, offset, weight, padding=padding)  # DCN v1: no modulation

    conv = ModulatedDeformConv2d(8, 6, kernel, padding=padding, bias=False)
    padded = pad_dcn_v1_offsets(offset_weight, offset_bias)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.offset_weight.copy_(padded[0])
        conv.offset_bias.copy_(padded[1])
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_dcn_v1_padded_into_detectron2_backbone_dcn_is_exact():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 8, 10, 10, generator=generator)
    weight = torch.randn(8, 8, 3, 3, generator=generator)
    offset_weight = torch.randn(18, 8, 3, 3, generator=generator) * 0.3
    offset_bias = torch.randn(18, generator=generator)
    expected = deform_conv2d(
        x, F.conv2d(x, offset_weight, offset_bias, padding=1), weight, padding=1
    )
    # Detectron2's DeformBottleneckBlock with DEFORM_MODULATED: conv2_offset then chunk(3)
    conv2 = ModulatedDeformConv(8, 8, 3, padding=1, bias=False)
    padded_weight, padded_bias = pad_dcn_v1_offsets(offset_weight, offset_bias)
    with torch.no_grad():
        conv2.weight.copy_(weight)
        offset_mask = F.conv2d(x, padded_weight, padded_bias, padding=1)
        o1, o2, mask = torch.chunk(offset_mask, 3, dim=1)
        got = conv2(x, torch.cat((o1, o2), dim=1), mask.sigmoid())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # see the test above


@pytest.mark.parametrize("kernel", [3, 1])
def test_dcn_v2_conversion_matches_mmcv_modulated_deform_conv(kernel):
    generator = torch.Generator().manual_seed(10 + kernel)
    x = torch.randn(2, 8, 9, 11, generator=generator)
    weight = torch.randn(6, 8, kernel, kernel, generator=generator)
    offset_weight = torch.randn(3 * kernel**2, 8, kernel, kernel, generator=generator) * 0.3
    offset_bias = torch.randn(3 * kernel**2, generator=generator)
    expected = reference_dcn_v2(x, weight, offset_weight, offset_bias, kernel // 2)
    # the mmdet key names of a mask-feature conv (3x3) or of the 1x1 conv_pred (gap G1)
    prefix = (
        "mask_feat_head.convs_all_levels.1.conv0.conv"
        if kernel == 3
        else "mask_feat_head.conv_pred.0.conv"
    )
    converted = convert_checkpoint(
        {
            f"{prefix}.weight": weight,
            f"{prefix}.conv_offset.weight": offset_weight,
            f"{prefix}.conv_offset.bias": offset_bias,
        }
    ).state_dict
    target = "head.mask_features." + ("levels.1.0.0" if kernel == 3 else "predictor")
    conv = ModulatedDeformConv2d(8, 6, kernel, padding=kernel // 2, bias=False)
    conv.load_state_dict({k[len(target) + 1 :]: v for k, v in converted.items()}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_released_file_layout_with_module_prefix_and_legacy_dcn_names():
    z = torch.zeros
    state = {
        "backbone.layer2.0.conv2.weight": z(128, 128, 3, 3),
        "backbone.layer2.0.conv2_offset.weight": z(18, 128, 3, 3),  # pre-2020 DCN v1 name
        "backbone.layer2.0.conv2_offset.bias": z(18),
        "backbone.layer3.1.conv2.conv_offset_mask.weight": z(27, 256, 3, 3),  # pre-2020 DCN v2
        "backbone.layer3.1.conv2.conv_offset_mask.bias": z(27),
        "backbone.layer4.0.conv2.conv_offset.weight": z(27, 512, 3, 3),  # current DCN v2
        "backbone.layer4.0.conv2.conv_offset.bias": z(27),
        "backbone.layer1.0.bn1.num_batches_tracked": torch.tensor(5),
        "bbox_head.cate_convs.3.conv_offset.weight": z(18, 256, 3, 3),  # legacy head DCN v1
        "bbox_head.cate_convs.3.conv_offset.bias": z(18),
    }
    checkpoint = {
        "meta": {"CLASSES": ("a", "b")},
        "state_dict": {"module." + k: v for k, v in state.items()},
    }
    converted = convert_checkpoint(checkpoint)
    assert converted.source == "original" and converted.classes == ("a", "b")
    assert converted.dropped == ["backbone.layer1.0.bn1.num_batches_tracked"]
    shapes = {k: tuple(v.shape) for k, v in converted.state_dict.items()}
    assert shapes == {
        "backbone.bottom_up.res3.0.conv2.weight": (128, 128, 3, 3),
        "backbone.bottom_up.res3.0.conv2_offset.weight": (27, 128, 3, 3),
        "backbone.bottom_up.res3.0.conv2_offset.bias": (27,),
        "backbone.bottom_up.res4.1.conv2_offset.weight": (27, 256, 3, 3),
        "backbone.bottom_up.res4.1.conv2_offset.bias": (27,),
        "backbone.bottom_up.res5.0.conv2_offset.weight": (27, 512, 3, 3),
        "backbone.bottom_up.res5.0.conv2_offset.bias": (27,),
        "head.cate_tower.3.offset_weight": (27, 256, 3, 3),
        "head.cate_tower.3.offset_bias": (27,),
    }
    assert sorted(converted.padded_dcn_v1) == [
        "backbone.bottom_up.res3.0.conv2_offset.weight",
        "head.cate_tower.3.offset_weight",
    ]
    # a Detectron2 backbone with unmodulated (v1) DCN keeps the 18 channels
    kept = convert_checkpoint(
        checkpoint, target_shapes={"backbone.bottom_up.res3.0.conv2_offset.weight": (18, 128, 3, 3)}
    )
    assert kept.state_dict["backbone.bottom_up.res3.0.conv2_offset.weight"].shape[0] == 18


def test_unmapped_keys_fail_naming_every_one():
    checkpoint = {
        "state_dict": {
            "bbox_head.cate_convs.0.conv.weight": torch.zeros(1),
            "bbox_head.mystery.weight": torch.zeros(1),
            "neck.extra_conv.weight": torch.zeros(1),
        }
    }
    with pytest.raises(CheckpointConversionError) as error:
        convert_checkpoint(checkpoint)
    assert "bbox_head.mystery.weight" in str(error.value)
    assert "neck.extra_conv.weight" in str(error.value)
    with pytest.raises(CheckpointConversionError, match="no state dict of tensors"):
        convert_checkpoint({"state_dict": {"a": "not a tensor"}})
    with pytest.raises(CheckpointConversionError, match="Detectron2 / solo_d2 names"):
        convert_checkpoint({"model": {"head.cate_pred.weight": torch.zeros(1)}})


def test_source_detection():
    assert (
        detect_source({"ins_head.cate_pred.weight": 0, "mask_head.conv_pred.0.weight": 0})
        == "adelaidet"
    )
    assert detect_source({"mask_head.cls_convs.0.conv.weight": 0}) == "mmdet"
    assert detect_source({"bbox_head.solo_cate.weight": 0}) == "original"
    assert detect_source({"backbone.layer1.0.conv1.weight": 0}) == "original"
    assert (
        detect_source({"backbone.bottom_up.stem.conv1.weight": 0, "head.cate_pred.bias": 0}) is None
    )


def tagged(checkpoint_state):
    """Fill tensor k with the value k (real tensors), so every converted tensor names its source."""
    for index, key in enumerate(sorted(checkpoint_state)):
        value = checkpoint_state[key]
        checkpoint_state[key] = torch.full(value.shape, float(index + 1))
    return {index + 1: key for index, key in enumerate(sorted(checkpoint_state))}


@pytest.mark.parametrize("source", ["adelaidet", "mmdet"])
def test_every_source_tensor_lands_once_with_its_values(source):
    """A bijection from the source keys (minus counters) onto the model keys, values intact."""
    from detectron2.config import get_cfg
    from solo_d2 import add_solo_config
    from solo_d2.checkpoint.verify import compare_with_model, model_state_shapes

    cfg = get_cfg()
    add_solo_config(cfg)
    if source == "adelaidet":
        cfg.merge_from_file("configs/AdelaiDet/SOLOv2_R50_3x.yaml")
        shapes = model_state_shapes(cfg)
        backbone = {k: torch.empty(s) for k, s in shapes.items() if k.startswith("backbone.")}
        checkpoint = sources.adelaidet_checkpoint(backbone, device="cpu")
        state = checkpoint["model"]
    else:
        cfg.merge_from_file("configs/SOLOv2_Light_448_R18_3x.yaml")
        shapes = model_state_shapes(cfg)
        checkpoint = sources.mmdet_checkpoint("SOLOv2_Light_448_R18_3x", "R18", device="cpu")
        state = checkpoint["state_dict"]
    names = tagged(state)
    converted = convert_checkpoint(checkpoint, source, target_shapes=shapes)
    assert compare_with_model(converted.state_dict, shapes).ok
    sources_seen = []
    for value in converted.state_dict.values():
        tag = value.flatten()[0].item()
        assert torch.all(value == tag)
        sources_seen.append(names[int(tag)])
    kept = {k for k in state if not k.endswith("num_batches_tracked")}
    assert sorted(sources_seen) == sorted(kept)
