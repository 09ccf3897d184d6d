"""Key maps from the published SOLO checkpoint layouts to solo_d2 parameter names.

Three layouts are published (see ``docs/CHECKPOINTS.md`` for their file formats):

* ``original``: the authors' WXinlong/SOLO code (mmdetection v1): ``backbone.`` (mmdet /
  torchvision ResNet names), ``neck.`` (mmdet FPN), ``bbox_head.`` and, for SOLOv2,
  ``mask_feat_head.``;
* ``mmdet``: mmdetection 2.x / 3.x: the same backbone and neck, heads under ``mask_head.``
  with other module names; :func:`mmdet_to_original_key` renames them to ``original`` names;
* ``adelaidet``: AdelaiDet (Detectron2): the backbone already has Detectron2 names, heads under
  ``ins_head.`` / ``mask_head.`` as ``nn.Sequential`` towers; see :func:`adelaidet_head_keys`.

Every function here is a pure function of key names (and, for AdelaiDet, tensor ranks). A key
that no rule maps returns ``None``; the converter turns that into an error naming the key.
"""

import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "DROPPED_KEY_PATTERN",
    "adelaidet_head_keys",
    "mmdet_to_original_key",
    "original_key",
    "resnet_key",
]

#: Keys that hold bookkeeping, not weights: dropped by rule, never reported as unmapped.
#: (BatchNorm step counters; AdelaiDet-style input normalisation buffers.)
DROPPED_KEY_PATTERN = re.compile(r"(.*\.)?num_batches_tracked|pixel_(mean|std)")

_Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]
_PARAM = r"(weight|bias)"
_NORM_PARAM = r"(weight|bias|running_mean|running_var)"


def _apply(rules: Sequence[Tuple[re.Pattern, Union[str, Callable]]], key: str) -> Optional[str]:
    """The first rule whose pattern matches the whole key, applied; None when none matches."""
    for pattern, replacement in rules:
        match = pattern.fullmatch(key)
        if match:
            return replacement(match) if callable(replacement) else match.expand(replacement)
    return None


def _compile(rules: Sequence[_Rule]):
    return [(re.compile(pattern), replacement) for pattern, replacement in rules]


def _res(match: re.Match) -> str:
    """``layer{s}.{b}`` -> ``res{s+1}.{b}`` (mmdet counts stages from 1 after the stem)."""
    return f"res{int(match.group('stage')) + 1}.{match.group('block')}"


_BLOCK = r"layer(?P<stage>[1-4])\.(?P<block>\d+)"

# torchvision / mmdet ResNet and ResNeXt -> Detectron2 ResNet (relative to backbone.bottom_up).
_RESNET_RULES = _compile(
    [
        (r"conv1\.weight", "stem.conv1.weight"),
        (rf"bn1\.{_NORM_PARAM}", r"stem.conv1.norm.\1"),
        (rf"{_BLOCK}\.conv(?P<k>\d)\.weight", lambda m: f"{_res(m)}.conv{m.group('k')}.weight"),
        (
            rf"{_BLOCK}\.bn(?P<k>\d)\.(?P<p>{_NORM_PARAM[1:-1]})",
            lambda m: f"{_res(m)}.conv{m.group('k')}.norm.{m.group('p')}",
        ),
        (rf"{_BLOCK}\.downsample\.0\.weight", lambda m: f"{_res(m)}.shortcut.weight"),
        (
            rf"{_BLOCK}\.downsample\.1\.(?P<p>{_NORM_PARAM[1:-1]})",
            lambda m: f"{_res(m)}.shortcut.norm.{m.group('p')}",
        ),
        # Deformable conv2 offsets: current mmdet/mmcv name, pre-2020 mmdet name, and the
        # pre-2020 name of the modulated (DCNv2) variant.
        (
            rf"{_BLOCK}\.(conv2\.conv_offset|conv2_offset|conv2\.conv_offset_mask)"
            rf"\.(?P<p>weight|bias)",
            lambda m: f"{_res(m)}.conv2_offset.{m.group('p')}",
        ),
    ]
)


def resnet_key(key: str) -> Optional[str]:
    """A torchvision / mmdet ResNet(-Xt) parameter name -> Detectron2 ``ResNet`` name.

    ``"layer2.0.bn1.weight"`` -> ``"res3.0.conv1.norm.weight"``. Returns None for keys that are
    not ResNet parameters (e.g. torchvision's ``fc.*``).
    """
    return _apply(_RESNET_RULES, key)


# Original (mmdet v1) SOLO heads -> solo_d2 heads.
_TOWERS = {
    "ins_convs": "mask_tower",
    "ins_convs_x": "mask_tower_x",
    "ins_convs_y": "mask_tower_y",
    "cate_convs": "cate_tower",
    "kernel_convs": "kernel_tower",
}
# A deformable conv's own offset conv: current, pre-2020 and pre-2020 DCNv2 names.
_OFFSET = r"(conv\.conv_offset|conv_offset|conv\.conv_offset_mask)"


def _tower(match: re.Match) -> str:
    return f"head.{_TOWERS[match.group('tower')]}.{match.group('i')}"


def _feature_conv(match: re.Match) -> str:
    """``convs_all_levels.{l}.conv{j}`` -> ``mask_features.levels.{l}.{2j}.0`` (the j-th
    one-conv tower of level l; towers alternate with upsampling layers)."""
    return f"head.mask_features.levels.{match.group('l')}.{2 * int(match.group('j'))}.0"


_TOWER = r"bbox_head\.(?P<tower>ins_convs|ins_convs_x|ins_convs_y|cate_convs|kernel_convs)"
_FEATURE = r"mask_feat_head\.convs_all_levels\.(?P<l>\d+)\.conv(?P<j>\d+)"
_PREDICTOR = r"mask_feat_head\.conv_pred\.0"

_ORIGINAL_RULES = _compile(
    [
        (r"backbone\.(?P<k>.+)", lambda m: _prefixed("backbone.bottom_up.", resnet_key(m["k"]))),
        (
            rf"neck\.lateral_convs\.(?P<i>\d)\.conv\.{_PARAM}",
            lambda m: f"backbone.fpn_lateral{int(m['i']) + 2}.{m.group(2)}",
        ),
        (
            rf"neck\.fpn_convs\.(?P<i>\d)\.conv\.{_PARAM}",
            lambda m: f"backbone.fpn_output{int(m['i']) + 2}.{m.group(2)}",
        ),
        (rf"{_TOWER}\.(?P<i>\d+)\.conv\.weight", lambda m: f"{_tower(m)}.weight"),
        (rf"{_TOWER}\.(?P<i>\d+)\.gn\.{_PARAM}", lambda m: f"{_tower(m)}.norm.{m.group(3)}"),
        (
            rf"{_TOWER}\.(?P<i>\d+)\.{_OFFSET}\.{_PARAM}",
            lambda m: f"{_tower(m)}.offset_{m.group(4)}",
        ),
        (rf"bbox_head\.solo_ins_list\.(\d+)\.{_PARAM}", r"head.mask_preds.\1.\2"),
        (rf"bbox_head\.dsolo_ins_list_(x|y)\.(\d+)\.{_PARAM}", r"head.mask_preds_\1.\2.\3"),
        (rf"bbox_head\.d?solo_cate\.{_PARAM}", r"head.cate_pred.\1"),
        (rf"bbox_head\.solo_kernel\.{_PARAM}", r"head.kernel_pred.\1"),
        (rf"{_FEATURE}\.conv\.weight", lambda m: f"{_feature_conv(m)}.weight"),
        (rf"{_FEATURE}\.gn\.{_PARAM}", lambda m: f"{_feature_conv(m)}.norm.{m.group(3)}"),
        (rf"{_FEATURE}\.{_OFFSET}\.{_PARAM}", lambda m: f"{_feature_conv(m)}.offset_{m.group(4)}"),
        (rf"{_PREDICTOR}\.conv\.weight", "head.mask_features.predictor.weight"),
        (rf"{_PREDICTOR}\.gn\.{_PARAM}", r"head.mask_features.predictor.norm.\1"),
        (rf"{_PREDICTOR}\.{_OFFSET}\.{_PARAM}", r"head.mask_features.predictor.offset_\2"),
    ]
)


def _prefixed(prefix: str, key: Optional[str]) -> Optional[str]:
    return None if key is None else prefix + key


def original_key(key: str) -> Optional[str]:
    """A WXinlong/SOLO (mmdet v1) checkpoint key -> solo_d2 key, or None if unmapped.

    ``"bbox_head.ins_convs.0.gn.weight"`` -> ``"head.mask_tower.0.norm.weight"``;
    ``"neck.lateral_convs.0.conv.bias"`` -> ``"backbone.fpn_lateral2.bias"``.
    """
    return _apply(_ORIGINAL_RULES, key)


# mmdetection 2.x / 3.x module names -> original names (then original_key applies).
_MMDET_RULES = _compile(
    [
        (r"mask_head\.mask_feature_head\.conv_pred\.(.+)", r"mask_feat_head.conv_pred.0.\1"),
        (r"mask_head\.mask_feature_head\.(.+)", r"mask_feat_head.\1"),
        (r"mask_head\.mask_convs(_x|_y)?\.(.+)", r"bbox_head.ins_convs\1.\2"),
        (r"mask_head\.cls_convs\.(.+)", r"bbox_head.cate_convs.\1"),
        (r"mask_head\.kernel_convs\.(.+)", r"bbox_head.kernel_convs.\1"),
        (r"mask_head\.conv_mask_list\.(.+)", r"bbox_head.solo_ins_list.\1"),
        (r"mask_head\.conv_mask_list_(x|y)\.(.+)", r"bbox_head.dsolo_ins_list_\1.\2"),
        (r"mask_head\.conv_cls\.(.+)", r"bbox_head.solo_cate.\1"),
        (r"mask_head\.conv_kernel\.(.+)", r"bbox_head.solo_kernel.\1"),
        (r"(backbone|neck)\.(.+)", r"\1.\2"),
    ]
)


def mmdet_to_original_key(key: str) -> Optional[str]:
    """An mmdetection 2.x / 3.x SOLO / SOLOv2 key -> the original code's name, or None."""
    return _apply(_MMDET_RULES, key)


_ADELAIDET_RULES = _compile(
    [
        (r"backbone\.(.+)", r"backbone.\1"),  # AdelaiDet builds Detectron2's ResNet-FPN
        (rf"ins_head\.(cate_pred|kernel_pred)\.{_PARAM}", r"head.\1.\2"),
        (
            rf"mask_head\.convs_all_levels\.(?P<l>\d+)\.conv(?P<j>\d+)\.0\.{_PARAM}",
            lambda m: f"{_feature_conv(m)}.{m.group(3)}",
        ),
        (
            rf"mask_head\.convs_all_levels\.(?P<l>\d+)\.conv(?P<j>\d+)\.1\.{_PARAM}",
            lambda m: f"{_feature_conv(m)}.norm.{m.group(3)}",
        ),
        (rf"mask_head\.conv_pred\.0\.{_PARAM}", r"head.mask_features.predictor.\1"),
        (rf"mask_head\.conv_pred\.1\.{_PARAM}", r"head.mask_features.predictor.norm.\1"),
    ]
)
_ADELAIDET_TOWER = re.compile(
    r"ins_head\.(?P<tower>cate_tower|kernel_tower)\.(?P<i>\d+)\.(?P<p>.+)"
)


def adelaidet_head_keys(ranks: Mapping[str, int]) -> Dict[str, Optional[str]]:
    """AdelaiDet SOLOv2 keys -> solo_d2 keys (None for unmapped keys).

    Args:
        ranks: every key of the checkpoint with the rank (``tensor.dim()``) of its tensor.

    AdelaiDet's towers are ``nn.Sequential`` lists ``[conv, GroupNorm, ReLU] * n`` (or
    ``[conv(bias), ReLU] * n`` without norm), so the entry index alone does not say which conv a
    key belongs to: an entry with a 4-D ``weight`` is the next conv, an entry with a 1-D
    ``weight`` is the norm of the conv before it.
    """
    mapping: Dict[str, Optional[str]] = {}
    entries: Dict[Tuple[str, int], List[str]] = {}
    for key in ranks:
        match = _ADELAIDET_TOWER.fullmatch(key)
        if match:
            entries.setdefault((match["tower"], int(match["i"])), []).append(key)
        else:
            mapping[key] = _apply(_ADELAIDET_RULES, key)
    conv_index: Dict[str, int] = {}
    for tower, index in sorted(entries):
        keys = entries[tower, index]
        weight = f"ins_head.{tower}.{index}.weight"
        is_conv = ranks.get(weight) == 4
        if is_conv:
            conv_index[tower] = conv_index.get(tower, -1) + 1
        conv = conv_index.get(tower)
        for key in keys:
            param = _ADELAIDET_TOWER.fullmatch(key)["p"]
            if conv is None or param not in ("weight", "bias"):
                mapping[key] = None
            else:
                mapping[key] = f"head.{tower}.{conv}." + (param if is_conv else f"norm.{param}")
    return mapping
