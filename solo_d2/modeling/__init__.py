"""SOLO model: meta-architecture (registered in Detectron2's META_ARCH_REGISTRY), heads,
target builder, losses and post-processing."""

from .backbone import build_basic_resnet, build_basic_resnet_fpn_backbone
from .heads import (
    SOLO_HEAD_REGISTRY,
    DecoupledSOLOHead,
    DecoupledSOLOLightHead,
    SOLOHead,
    SOLOHeadBase,
    build_solo_head,
)
from .losses import category_focal_loss, dice_loss, mask_loss
from .meta_arch import SOLO
from .postprocess import SOLOPostProcessor, matrix_nms, points_nms
from .solov2 import MaskFeatureBranch, SOLOv2Head
from .targets import LevelTargets, build_solo_targets, build_solov2_targets

__all__ = [
    "SOLO",
    "SOLO_HEAD_REGISTRY",
    "DecoupledSOLOHead",
    "DecoupledSOLOLightHead",
    "LevelTargets",
    "MaskFeatureBranch",
    "SOLOPostProcessor",
    "SOLOHead",
    "SOLOHeadBase",
    "SOLOv2Head",
    "build_basic_resnet",
    "build_basic_resnet_fpn_backbone",
    "build_solo_head",
    "build_solo_targets",
    "build_solov2_targets",
    "category_focal_loss",
    "dice_loss",
    "mask_loss",
    "matrix_nms",
    "points_nms",
]
