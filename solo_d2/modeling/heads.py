"""SOLO heads (DESIGN.md rules N1-N4): the shared base, SOLO, Decoupled SOLO and Decoupled SOLO
Light. SOLOv2 is in :mod:`.solov2`.

A head maps the backbone levels to per-level category logits and to head-specific mask data,
and computes mask probabilities **only for requested cells** (the positives in training, the
candidates at inference), never all S^2 masks. All heads share the level split, the category
branch, the towers and the target/loss/post-processing code of the meta-architecture; a
variant differs only in its mask branch (``forward_mask`` / ``mask_probs``). They register in
``SOLO_HEAD_REGISTRY`` under the ``MODEL.SOLO.HEAD`` value.
"""

import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

from .layers import (
    at_level,
    conv_tower,
    coord_features,
    init_conv,
    per_sample_conv,
    resize_probs,
)

__all__ = [
    "SOLO_HEAD_REGISTRY",
    "SOLOHeadOutputs",
    "SOLOHeadBase",
    "SOLOHead",
    "DecoupledSOLOHead",
    "DecoupledSOLOLightHead",
    "build_solo_head",
    "register_head",
]

SOLO_HEAD_REGISTRY = Registry("SOLO_HEAD")
SOLO_HEAD_REGISTRY.__doc__ = "SOLO head variants, built from cfg.MODEL.SOLO.HEAD."


def register_head(name: str):
    """Class decorator: register a head under the ``MODEL.SOLO.HEAD`` value ``name``."""

    def register(cls):
        SOLO_HEAD_REGISTRY._do_register(name, cls)
        return cls

    return register


class SOLOHeadOutputs(NamedTuple):
    """cate_logits: per level Float[B, C, S, S]; mask_data: per level, head-specific."""

    cate_logits: List[torch.Tensor]
    mask_data: List[Any]


def _logit(prob: float) -> float:
    """The bias whose sigmoid is ``prob``."""
    return -math.log((1 - prob) / prob)


def _deformable_layers(which: str, num_convs: int) -> Tuple[int, ...]:
    """Indices of the deformable tower convs for ``MODEL.SOLO.DCN_TOWER_LAYERS``."""
    layers = {"none": (), "last": (num_convs - 1,), "all": tuple(range(num_convs))}
    if which not in layers:
        raise ValueError(
            f"MODEL.SOLO.DCN_TOWER_LAYERS must be 'none', 'last' or 'all', got {which!r}"
        )
    return layers[which]


class SOLOHeadBase(nn.Module):
    """Parts shared by all SOLO heads: level split, category branch, configuration.

    Subclasses implement ``forward_mask(level, feature)`` (mask data of one level) and
    ``mask_probs``; class attributes describe their targets (see ``target_mask_strides``).
    """

    #: SOLO (True): a cell covered by two gts keeps one mask sample (the later gt's).
    #: SOLOv2 (False): one mask sample per (gt, cell) pair.
    one_sample_per_cell = True
    #: Stride of the masks that inference binarises and compares (rules I3-I5): H/4.
    mask_stride = 4

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_grids: Sequence[int],
        feat_channels: int,
        num_stacked_convs: int,
        norm: str,
        prior_prob: float,
        mask_prior_prob: float,
        dcn_tower_layers: str,
        norm_per_level: bool = False,
    ):
        super().__init__()
        if norm_per_level and not norm:
            raise ValueError("MODEL.SOLO.NORM_PER_LEVEL needs a MODEL.SOLO.NORM (e.g. \"BN\")")
        self.norm_per_level = norm_per_level
        self.num_classes = num_classes
        self.num_grids = list(num_grids)
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.num_stacked_convs = num_stacked_convs
        self.norm = norm
        self.prior_bias = _logit(prior_prob)
        self.mask_prior_bias = _logit(mask_prior_prob)
        self.tower_dcn_layers = _deformable_layers(dcn_tower_layers, num_stacked_convs)
        self.cate_tower = self.tower(in_channels)
        self.cate_pred = nn.Conv2d(feat_channels, num_classes, kernel_size=3, padding=1)
        init_conv(self.cate_tower)
        init_conv(self.cate_pred, bias=self.prior_bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SOLO
        channels = {input_shape[f].channels for f in head.IN_FEATURES}
        if len(channels) != 1:
            raise ValueError(f"SOLO needs equal channels in MODEL.SOLO.IN_FEATURES, got {channels}")
        if len(head.IN_FEATURES) != len(head.NUM_GRIDS):
            raise ValueError(
                f"MODEL.SOLO.NUM_GRIDS has {len(head.NUM_GRIDS)} entries for "
                f"{len(head.IN_FEATURES)} MODEL.SOLO.IN_FEATURES"
            )
        return {
            "in_channels": channels.pop(),
            "num_classes": head.NUM_CLASSES,
            "num_grids": head.NUM_GRIDS,
            "feat_channels": head.FEAT_CHANNELS,
            "num_stacked_convs": head.NUM_STACKED_CONVS,
            "norm": head.NORM,
            "prior_prob": head.PRIOR_PROB,
            "mask_prior_prob": head.MASK_PRIOR_PROB,
            "dcn_tower_layers": head.DCN_TOWER_LAYERS,
            "norm_per_level": head.NORM_PER_LEVEL,
        }

    def tower(self, in_channels: int) -> nn.Sequential:
        """A tower shared by the levels; run it on level k as ``at_level(tower, k)(x)``."""
        return conv_tower(
            in_channels,
            self.feat_channels,
            self.num_stacked_convs,
            self.norm,
            self.tower_dcn_layers,
            num_levels=len(self.num_grids) if self.norm_per_level else 1,
        )

    @staticmethod
    def split_features(features: List[torch.Tensor]) -> List[torch.Tensor]:
        """[P2 resized x0.5, P3, P4, P5, P6 resized to P5's size]: head strides 8, 8, 16, 32, 32."""
        first = F.interpolate(features[0], scale_factor=0.5, mode="bilinear", align_corners=False)
        last = F.interpolate(
            features[-1], size=features[-2].shape[-2:], mode="bilinear", align_corners=False
        )
        return [first, *features[1:-1], last]

    def target_mask_strides(self, level_strides: Sequence[int]) -> List[int]:
        """Output stride of the mask targets per level (SOLO: half the level stride)."""
        return [s // 2 for s in level_strides]

    def forward(self, features: List[torch.Tensor]) -> SOLOHeadOutputs:
        levels = self.split_features(features)
        cate_logits = [
            self.cate_pred(
                at_level(self.cate_tower, k)(
                    F.interpolate(f, size=s, mode="bilinear", align_corners=False)
                )
            )
            for k, (f, s) in enumerate(zip(levels, self.num_grids))
        ]
        return SOLOHeadOutputs(cate_logits, self.forward_mask(levels))

    def forward_mask(self, levels: List[torch.Tensor]) -> List[Any]:
        raise NotImplementedError

    def mask_probs(
        self,
        outputs: SOLOHeadOutputs,
        level: int,
        image_idx: torch.Tensor,
        cells: torch.Tensor,
        out_size: Optional[Tuple[int, int]] = None,
    ) -> torch.Tensor:
        """Mask probabilities of the given cells of one level.

        Args:
            level: level index; image_idx: Long[K] image of each sample; cells: Long[K] flat
                cell index ``i * S + j`` at that level.
            out_size: resize to this (h, w) (bilinear), or None for the level's resolution.
        Returns:
            Float[K, h, w].
        """
        raise NotImplementedError


def _upsampled_tower_output(tower: nn.Module, feature: torch.Tensor) -> torch.Tensor:
    return F.interpolate(tower(feature), scale_factor=2, mode="bilinear", align_corners=False)


@register_head("SOLO")
class SOLOHead(SOLOHeadBase):
    """Vanilla SOLO: a CoordConv [x, y] mask tower, then one 1x1 output channel per grid cell.

    mask_data per level: Float[B, E, h, w] tower features (upsampled x2).
    """

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mask_tower = self.tower(self.in_channels + 2)
        self.mask_preds = nn.ModuleList(
            nn.Conv2d(self.feat_channels, s * s, kernel_size=1) for s in self.num_grids
        )
        init_conv(self.mask_tower)
        init_conv(self.mask_preds, bias=self.mask_prior_bias)

    def forward_mask(self, levels):
        return [
            _upsampled_tower_output(
                at_level(self.mask_tower, k), torch.cat([f, coord_features(f)], dim=1)
            )
            for k, f in enumerate(levels)
        ]

    def dense_mask_logits(self, outputs: SOLOHeadOutputs, level: int) -> torch.Tensor:
        """All S^2 mask logits of a level, Float[B, S^2, h, w], as the original implementation
        computes them (solo_d2 computes requested cells only; for analysis and baselines)."""
        return self.mask_preds[level](outputs.mask_data[level])

    def mask_probs(self, outputs, level, image_idx, cells, out_size=None):
        conv = self.mask_preds[level]
        logits = per_sample_conv(
            outputs.mask_data[level], image_idx, conv.weight[cells], conv.bias[cells]
        )
        return resize_probs(logits.sigmoid(), out_size)


class _DecoupledMaskProbs:
    """Mask of cell (i, j) = sigmoid(y_i) * sigmoid(x_j), from S "x" and S "y" 3x3 output convs.

    Only the x / y channels of the requested cells are computed. At inference (``out_size``)
    each factor is resized before the product, as the original implementation does.
    mask_data per level: (x features, y features), Float[B, E, h, w] each (the same tensor
    for the light head).
    """

    def _build_decoupled_outputs(self):
        self.mask_preds_x = nn.ModuleList(
            nn.Conv2d(self.feat_channels, s, kernel_size=3, padding=1) for s in self.num_grids
        )
        self.mask_preds_y = nn.ModuleList(
            nn.Conv2d(self.feat_channels, s, kernel_size=3, padding=1) for s in self.num_grids
        )
        init_conv(self.mask_preds_x, bias=self.mask_prior_bias)
        init_conv(self.mask_preds_y, bias=self.mask_prior_bias)

    def mask_probs(self, outputs, level, image_idx, cells, out_size=None):
        num_grid = self.num_grids[level]
        rows, cols = cells // num_grid, cells % num_grid
        feat_x, feat_y = outputs.mask_data[level]
        conv_x, conv_y = self.mask_preds_x[level], self.mask_preds_y[level]
        probs_x = per_sample_conv(
            feat_x, image_idx, conv_x.weight[cols], conv_x.bias[cols]
        ).sigmoid()
        probs_y = per_sample_conv(
            feat_y, image_idx, conv_y.weight[rows], conv_y.bias[rows]
        ).sigmoid()
        return resize_probs(probs_x, out_size) * resize_probs(probs_y, out_size)


@register_head("DecoupledSOLO")
class DecoupledSOLOHead(_DecoupledMaskProbs, SOLOHeadBase):
    """Decoupled SOLO: separate x and y mask towers.

    Reading of the original: the x tower gets only the x CoordConv channel and the y tower only
    the y channel (each input has C + 1 channels), so each factor is conditioned on its own axis.
    """

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mask_tower_x = self.tower(self.in_channels + 1)
        self.mask_tower_y = self.tower(self.in_channels + 1)
        init_conv(self.mask_tower_x)
        init_conv(self.mask_tower_y)
        self._build_decoupled_outputs()

    def forward_mask(self, levels):
        data = []
        for k, f in enumerate(levels):
            coords = coord_features(f)
            data.append(
                (
                    _upsampled_tower_output(
                        at_level(self.mask_tower_x, k), torch.cat([f, coords[:, :1]], dim=1)
                    ),
                    _upsampled_tower_output(
                        at_level(self.mask_tower_y, k), torch.cat([f, coords[:, 1:]], dim=1)
                    ),
                )
            )
        return data


@register_head("DecoupledSOLOLight")
class DecoupledSOLOLightHead(_DecoupledMaskProbs, SOLOHeadBase):
    """Decoupled SOLO Light: one CoordConv [x, y] mask tower shared by the x and y outputs."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mask_tower = self.tower(self.in_channels + 2)
        init_conv(self.mask_tower)
        self._build_decoupled_outputs()

    def forward_mask(self, levels):
        data = []
        for k, f in enumerate(levels):
            feat = _upsampled_tower_output(
                at_level(self.mask_tower, k), torch.cat([f, coord_features(f)], dim=1)
            )
            data.append((feat, feat))
        return data


def build_solo_head(cfg, input_shape: Dict[str, ShapeSpec]) -> SOLOHeadBase:
    """Build the head named by ``cfg.MODEL.SOLO.HEAD``."""
    return SOLO_HEAD_REGISTRY.get(cfg.MODEL.SOLO.HEAD)(cfg, input_shape)
