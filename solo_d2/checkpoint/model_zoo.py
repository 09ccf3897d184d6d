"""The published SOLO / SOLOv2 models and the solo_d2 configs their weights load into.

:data:`RELEASED_MODELS` lists every model released by the authors' original code (WXinlong/SOLO,
mmdetection v1), AdelaiDet and mmdetection 2.x/3.x, with the download address each source
publishes and the COCO val2017 mask AP it reports. ``MODEL_ZOO.md`` is this table for people;
a test keeps the two in sync and loads every model's key layout into its config.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["RELEASED_MODELS", "ReleasedModel", "released_model"]


@dataclass(frozen=True)
class ReleasedModel:
    """One published checkpoint.

    Attributes:
        name: the name its source uses.
        source: "original", "adelaidet" or "mmdet" (the layout, see ``solo_d2.checkpoint``).
        url: download address as the source publishes it.
        config: the solo_d2 config (path relative to the repository root).
        mask_ap: COCO val2017 mask AP published by the source.
        backbone: "R18", "R34", "R50", "R101" or "X101-64x4d".
        dcn: "v1" or "v2" deformable convs, or None.
    """

    name: str
    source: str
    url: str
    config: str
    mask_ap: float
    backbone: str
    dcn: Optional[str] = None


_ORIGINAL = "https://huggingface.co/xinlongwang/SOLO/resolve/main/{}.pth?download=true"
_ADELAIDET = "https://huggingface.co/ZjuCv/AdelaiDet/blob/main/{}.pth"
_MMDET = "https://download.openmmlab.com/mmdetection/v2.0/{}.pth"


def _original(name, file, config, ap, backbone, dcn=None):
    return ReleasedModel(name, "original", _ORIGINAL.format(file), config, ap, backbone, dcn)


def _mmdet(name, path, config, ap, backbone, dcn=None):
    return ReleasedModel(name, "mmdet", _MMDET.format(path), config, ap, backbone, dcn)


RELEASED_MODELS: Tuple[ReleasedModel, ...] = (
    # WXinlong/SOLO README, "Models" and "Light-weight models".
    _original("SOLO_R50_1x", "SOLO_R50_1x", "configs/SOLO_R50_1x.yaml", 32.9, "R50"),
    _original("SOLO_R50_3x", "SOLO_R50_3x", "configs/SOLO_R50_3x.yaml", 35.8, "R50"),
    _original("SOLO_R101_3x", "SOLO_R101_3x", "configs/SOLO_R101_3x.yaml", 37.1, "R101"),
    _original(
        "Decoupled_SOLO_R50_1x",
        "DECOUPLED_SOLO_R50_1x",
        "configs/Decoupled_SOLO_R50_1x.yaml",
        33.9,
        "R50",
    ),
    _original(
        "Decoupled_SOLO_R50_3x",
        "DECOUPLED_SOLO_R50_3x",
        "configs/Decoupled_SOLO_R50_3x.yaml",
        36.4,
        "R50",
    ),
    _original(
        "Decoupled_SOLO_R101_3x",
        "DECOUPLED_SOLO_R101_3x",
        "configs/Decoupled_SOLO_R101_3x.yaml",
        37.9,
        "R101",
    ),
    _original("SOLOv2_R50_1x", "SOLOv2_R50_1x", "configs/SOLOv2_R50_1x.yaml", 34.8, "R50"),
    _original("SOLOv2_R50_3x", "SOLOv2_R50_3x", "configs/SOLOv2_R50_3x.yaml", 37.5, "R50"),
    _original("SOLOv2_R101_3x", "SOLOv2_R101_3x", "configs/SOLOv2_R101_3x.yaml", 39.1, "R101"),
    _original(
        "SOLOv2_R101_DCN_3x",
        "SOLOv2_R101_DCN_3x",
        "configs/SOLOv2_R101_DCN_3x.yaml",
        41.4,
        "R101",
        "v2",
    ),
    _original(
        "SOLOv2_X101_DCN_3x",
        "SOLOv2_X101_DCN_3x",
        "configs/SOLOv2_X101_DCN_3x.yaml",
        42.4,
        "X101-64x4d",
        "v2",
    ),
    _original(
        "Decoupled_SOLO_Light_R50_3x",
        "DECOUPLED_SOLO_LIGHT_R50_3x",
        "configs/Decoupled_SOLO_Light_R50_3x.yaml",
        33.0,
        "R50",
    ),
    _original(
        "Decoupled_SOLO_Light_DCN_R50_3x",
        "DECOUPLED_SOLO_LIGHT_DCN_R50_3x",
        "configs/Decoupled_SOLO_Light_DCN_R50_3x.yaml",
        35.0,
        "R50",
        "v1",
    ),
    _original(
        "SOLOv2_Light_448_R18_3x",
        "SOLOv2_LIGHT_448_R18_3x",
        "configs/SOLOv2_Light_448_R18_3x.yaml",
        29.6,
        "R18",
    ),
    _original(
        "SOLOv2_Light_448_R34_3x",
        "SOLOv2_LIGHT_448_R34_3x",
        "configs/SOLOv2_Light_448_R34_3x.yaml",
        32.0,
        "R34",
    ),
    _original(
        "SOLOv2_Light_448_R50_3x",
        "SOLOv2_LIGHT_448_R50_3x",
        "configs/SOLOv2_Light_448_R50_3x.yaml",
        33.7,
        "R50",
    ),
    _original(
        "SOLOv2_Light_512_DCN_R50_3x",
        "SOLOv2_LIGHT_512_DCN_R50_3x",
        "configs/SOLOv2_Light_512_DCN_R50_3x.yaml",
        36.4,
        "R50",
        "v1",
    ),
    # AdelaiDet configs/SOLOv2/README.md.
    ReleasedModel(
        "SOLOv2_R50_3x",
        "adelaidet",
        _ADELAIDET.format("SOLOv2_R50_3x"),
        "configs/AdelaiDet/SOLOv2_R50_3x.yaml",
        37.6,
        "R50",
    ),
    ReleasedModel(
        "SOLOv2_R101_3x",
        "adelaidet",
        _ADELAIDET.format("SOLOv2_R101_3x"),
        "configs/AdelaiDet/SOLOv2_R101_3x.yaml",
        39.0,
        "R101",
    ),
    # mmdetection configs/solo/README.md and configs/solov2/README.md.
    _mmdet(
        "solo_r50_fpn_1x_coco",
        "solo/solo_r50_fpn_1x_coco/solo_r50_fpn_1x_coco_20210821_035055-2290a6b8",
        "configs/SOLO_R50_1x.yaml",
        33.1,
        "R50",
    ),
    _mmdet(
        "solo_r50_fpn_3x_coco",
        "solo/solo_r50_fpn_3x_coco/solo_r50_fpn_3x_coco_20210901_012353-11d224d7",
        "configs/SOLO_R50_3x.yaml",
        35.9,
        "R50",
    ),
    _mmdet(
        "decoupled-solo_r50_fpn_1x_coco",
        "solo/decoupled_solo_r50_fpn_1x_coco/"
        "decoupled_solo_r50_fpn_1x_coco_20210820_233348-6337c589",
        "configs/Decoupled_SOLO_R50_1x.yaml",
        33.9,
        "R50",
    ),
    _mmdet(
        "decoupled-solo_r50_fpn_3x_coco",
        "solo/decoupled_solo_r50_fpn_3x_coco/"
        "decoupled_solo_r50_fpn_3x_coco_20210821_042504-7b3301ec",
        "configs/Decoupled_SOLO_R50_3x.yaml",
        36.7,
        "R50",
    ),
    _mmdet(
        "decoupled-solo-light_r50_fpn_3x_coco",
        "solo/decoupled_solo_light_r50_fpn_3x_coco/"
        "decoupled_solo_light_r50_fpn_3x_coco_20210906_142703-e70e226f",
        "configs/Decoupled_SOLO_Light_R50_3x.yaml",
        32.9,
        "R50",
    ),
    _mmdet(
        "solov2_r50_fpn_1x_coco",
        "solov2/solov2_r50_fpn_1x_coco/solov2_r50_fpn_1x_coco_20220512_125858-a357fa23",
        "configs/SOLOv2_R50_1x.yaml",
        34.8,
        "R50",
    ),
    _mmdet(
        "solov2_r50_fpn_ms-3x_coco",
        "solov2/solov2_r50_fpn_3x_coco/solov2_r50_fpn_3x_coco_20220512_125856-fed092d4",
        "configs/SOLOv2_R50_3x.yaml",
        37.5,
        "R50",
    ),
    _mmdet(
        "solov2_r101_fpn_ms-3x_coco",
        "solov2/solov2_r101_fpn_3x_coco/solov2_r101_fpn_3x_coco_20220511_095119-c559a076",
        "configs/SOLOv2_R101_3x.yaml",
        39.1,
        "R101",
    ),
    _mmdet(
        "solov2_r101-dcn_fpn_ms-3x_coco",
        "solov2/solov2_r101_dcn_fpn_3x_coco/solov2_r101_dcn_fpn_3x_coco_20220513_214734-16c966cb",
        "configs/SOLOv2_R101_DCN_3x.yaml",
        41.2,
        "R101",
        "v2",
    ),
    _mmdet(
        "solov2_x101-dcn_fpn_ms-3x_coco",
        "solov2/solov2_x101_dcn_fpn_3x_coco/solov2_x101_dcn_fpn_3x_coco_20220513_214337-aef41095",
        "configs/SOLOv2_X101_DCN_3x.yaml",
        42.4,
        "X101-64x4d",
        "v2",
    ),
    _mmdet(
        "solov2-light_r18_fpn_ms-3x_coco",
        "solov2/solov2_light_r18_fpn_3x_coco/solov2_light_r18_fpn_3x_coco_20220511_083717-75fa355b",
        "configs/SOLOv2_Light_448_R18_3x.yaml",
        29.7,
        "R18",
    ),
    _mmdet(
        "solov2-light_r34_fpn_ms-3x_coco",
        "solov2/solov2_light_r34_fpn_3x_coco/solov2_light_r34_fpn_3x_coco_20220511_091839-e51659d3",
        "configs/SOLOv2_Light_448_R34_3x.yaml",
        31.9,
        "R34",
    ),
    _mmdet(
        "solov2-light_r50_fpn_ms-3x_coco",
        "solov2/solov2_light_r50_fpn_3x_coco/solov2_light_r50_fpn_3x_coco_20220512_165256-c93a6074",
        "configs/SOLOv2_Light_448_R50_3x.yaml",
        33.7,
        "R50",
    ),
)


def released_model(name: str, source: Optional[str] = None) -> ReleasedModel:
    """The released model called ``name`` (and published by ``source``, when names repeat)."""
    found = [m for m in RELEASED_MODELS if m.name == name and source in (None, m.source)]
    if len(found) != 1:
        raise KeyError(f"{len(found)} released models named {name!r} (source {source!r})")
    return found[0]
