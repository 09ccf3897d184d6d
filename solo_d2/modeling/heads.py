"""SOLO heads: SOLO, Decoupled SOLO, Decoupled SOLO Light and SOLOv2 (SOLO.md section 1).

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
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry

from .layers import (
    ModulatedDeformConv2d,
    conv_tower,
    coord_features,
    init_conv,
    per_sample_conv,
)

__all__ = [
    "SOLO_HEAD_REGISTRY",
    "SOLOHeadOutputs",
    "SOLOHeadBase",
    "SOLOHead",
    "DecoupledSOLOHead",
    "DecoupledSOLOLightHead",
    "SOLOv2Head",
    "MaskFeatureBranch",
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


def _deformable_layers(which: str, num_convs: int) -> Tuple[int, ...]:
    """Indices of the deformable tower convs for ``MODEL.SOLO.DCN_TOWER_LAYERS``."""
    layers = {"none": (), "last": (num_convs - 1,), "all": tuple(range(num_convs))}
    if which not in layers:
        raise ValueError(
            f"MODEL.SOLO.DCN_TOWER_LAYERS must be 'none', 'last' or 'all', got {which!r}"
        )
    return layers[which]


def _resize(probs: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
    """Bilinear resize of Float[K, h, w] to ``size`` (no-op when None or equal)."""
    if size is None or tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]


class SOLOHeadBase(nn.Module):
    """Parts shared by all SOLO heads: level split, category branch, configuration.

    Subclasses implement ``forward_mask(level, feature)`` (mask data of one level) and
    ``mask_probs``; class attributes describe their targets (see ``target_mask_strides``).
    """

    #: SOLO (True): a cell covered by two gts keeps one mask sample (the later gt's).
    #: SOLOv2 (False): one mask sample per (gt, cell) pair.
    one_sample_per_cell = True

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
        dcn_tower_layers: str,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_grids = list(num_grids)
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.num_stacked_convs = num_stacked_convs
        self.norm = norm
        self.prior_bias = -math.log((1 - prior_prob) / prior_prob)
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
            "dcn_tower_layers": head.DCN_TOWER_LAYERS,
        }

    def tower(self, in_channels: int) -> nn.Sequential:
        return conv_tower(
            in_channels,
            self.feat_channels,
            self.num_stacked_convs,
            self.norm,
            self.tower_dcn_layers,
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
                self.cate_tower(F.interpolate(f, size=s, mode="bilinear", align_corners=False))
            )
            for f, s in zip(levels, self.num_grids)
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
        init_conv(self.mask_preds, bias=self.prior_bias)

    def forward_mask(self, levels):
        return [
            _upsampled_tower_output(self.mask_tower, torch.cat([f, coord_features(f)], dim=1))
            for f in levels
        ]

    def mask_probs(self, outputs, level, image_idx, cells, out_size=None):
        conv = self.mask_preds[level]
        logits = per_sample_conv(
            outputs.mask_data[level], image_idx, conv.weight[cells], conv.bias[cells]
        )
        return _resize(logits.sigmoid(), out_size)


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
        init_conv(self.mask_preds_x, bias=self.prior_bias)
        init_conv(self.mask_preds_y, bias=self.prior_bias)

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
        return _resize(probs_x, out_size) * _resize(probs_y, out_size)


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
        for f in levels:
            coords = coord_features(f)
            data.append(
                (
                    _upsampled_tower_output(
                        self.mask_tower_x, torch.cat([f, coords[:, :1]], dim=1)
                    ),
                    _upsampled_tower_output(
                        self.mask_tower_y, torch.cat([f, coords[:, 1:]], dim=1)
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
        for f in levels:
            feat = _upsampled_tower_output(
                self.mask_tower, torch.cat([f, coord_features(f)], dim=1)
            )
            data.append((feat, feat))
        return data


class MaskFeatureBranch(nn.Module):
    """SOLOv2's unified mask features at stride 4 from P2..P5.

    Level k: 3x3 conv-norm-ReLU then k x (x2 bilinear upsample [+ 3x3 conv-norm-ReLU before
    each further upsample]); the coarsest level gets CoordConv [x, y] before its first conv.
    The levels are summed, then a 1x1 conv-norm-ReLU gives ``out_channels`` (E). With
    ``deformable`` every conv, the 1x1 one included, is a modulated deformable conv.
    """

    def __init__(self, in_channels, channels, out_channels, num_levels, norm, deformable=False):
        super().__init__()
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            layers = []
            for j in range(max(level, 1)):
                extra = 2 if (level == num_levels - 1 and j == 0 and level > 0) else 0
                layers.append(  # a one-conv tower: 3x3 conv-norm-ReLU
                    conv_tower(
                        (in_channels if j == 0 else channels) + extra,
                        channels,
                        1,
                        norm,
                        deformable=(0,) if deformable else (),
                    )
                )
                if level > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.levels.append(nn.Sequential(*layers))
        self.predictor = (ModulatedDeformConv2d if deformable else Conv2d)(
            channels,
            out_channels,
            kernel_size=1,
            bias=not norm,
            norm=get_norm(norm, out_channels),
            activation=F.relu,
        )
        init_conv(self)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        fused = 0
        for level, (feature, convs) in enumerate(zip(features, self.levels)):
            if level == len(self.levels) - 1 and level > 0:
                feature = torch.cat([feature, coord_features(feature)], dim=1)
            fused = fused + convs(feature)
        return self.predictor(fused)


@register_head("SOLOv2")
class SOLOv2Head(SOLOHeadBase):
    """SOLOv2: per-cell dynamic 1x1 kernels applied to one unified mask-feature map at H/4.

    The kernel branch reads the level feature with CoordConv [x, y], resized to S x S; the
    category branch reads the same resized tensor without the coord channels. Kernels are E
    channels, the dynamic conv has no bias. mask_data per level: (kernel map Float[B, E, S, S],
    mask features Float[B, E, H/4, W/4]) (the mask features are shared by all levels).
    """

    one_sample_per_cell = False

    @configurable
    def __init__(
        self,
        *,
        kernel_channels: int,
        mask_feature_channels: int,
        num_mask_feature_levels: int,
        use_dcn_in_mask_features: bool,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_mask_feature_levels = num_mask_feature_levels
        self.kernel_tower = self.tower(self.in_channels + 2)
        self.kernel_pred = nn.Conv2d(self.feat_channels, kernel_channels, kernel_size=3, padding=1)
        init_conv(self.kernel_tower)
        init_conv(self.kernel_pred)
        self.mask_features = MaskFeatureBranch(
            self.in_channels,
            mask_feature_channels,
            kernel_channels,
            num_mask_feature_levels,
            self.norm,
            deformable=use_dcn_in_mask_features,
        )

    @classmethod
    def from_config(cls, cfg, input_shape):
        args = super().from_config(cfg, input_shape)
        args.update(
            kernel_channels=cfg.MODEL.SOLO.KERNEL_CHANNELS,
            mask_feature_channels=cfg.MODEL.SOLO.MASK_FEATURE_CHANNELS,
            num_mask_feature_levels=cfg.MODEL.SOLO.NUM_MASK_FEATURE_LEVELS,
            use_dcn_in_mask_features=cfg.MODEL.SOLO.USE_DCN_IN_MASK_FEATURES,
        )
        return args

    def target_mask_strides(self, level_strides):
        return [4] * len(level_strides)

    def forward(self, features):
        outputs = super().forward(features)
        # The unified map reads the original P2..P5 (not the split levels).
        mask_features = self.mask_features(features[: self.num_mask_feature_levels])
        return SOLOHeadOutputs(outputs.cate_logits, [(k, mask_features) for k in outputs.mask_data])

    def forward_mask(self, levels):
        kernels = []
        for f, num_grid in zip(levels, self.num_grids):
            kernel_input = F.interpolate(
                torch.cat([f, coord_features(f)], dim=1),
                size=num_grid,
                mode="bilinear",
                align_corners=False,
            )
            kernels.append(self.kernel_pred(self.kernel_tower(kernel_input)))
        return kernels

    def mask_probs(self, outputs, level, image_idx, cells, out_size=None):
        kernel_map, mask_features = outputs.mask_data[level]
        kernels = kernel_map.flatten(2)[image_idx, :, cells]  # [K, E]
        logits = per_sample_conv(mask_features, image_idx, kernels[:, :, None, None])
        return _resize(logits.sigmoid(), out_size)


def build_solo_head(cfg, input_shape: Dict[str, ShapeSpec]) -> SOLOHeadBase:
    """Build the head named by ``cfg.MODEL.SOLO.HEAD``."""
    return SOLO_HEAD_REGISTRY.get(cfg.MODEL.SOLO.HEAD)(cfg, input_shape)
