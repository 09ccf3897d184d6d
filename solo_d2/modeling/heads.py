"""SOLO heads (SOLO.md section 1).

A head maps the backbone levels to per-level category logits and to per-level mask features,
and computes mask probabilities **only for requested cells** (positives in training,
candidates at inference), never all S^2 masks. Variants register in ``SOLO_HEAD_REGISTRY`` and
are picked by ``MODEL.SOLO.HEAD``; they share the level split, the category branch and the
layer builders defined here.
"""
import math
from typing import Dict, List, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry

__all__ = [
    "SOLO_HEAD_REGISTRY",
    "register_head",
    "SOLOHeadOutputs",
    "SOLOHeadBase",
    "SOLOHead",
    "build_solo_head",
    "coord_features",
    "conv_tower",
    "dynamic_conv1x1",
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
    """cate_logits: per level Float[B, C, S, S]; mask_features: per level Float[B, E, h, w]."""

    cate_logits: List[torch.Tensor]
    mask_features: List[torch.Tensor]


def coord_features(feature: torch.Tensor) -> torch.Tensor:
    """CoordConv channels [x, y] for ``feature`` [B, C, H, W]: linspace(-1, 1) over W and H.

    Returns Float[B, 2, H, W].
    """
    batch, _, height, width = feature.shape
    xs = torch.linspace(-1, 1, width, device=feature.device, dtype=feature.dtype)
    ys = torch.linspace(-1, 1, height, device=feature.device, dtype=feature.dtype)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y])[None].expand(batch, -1, -1, -1)


def conv_tower(in_channels: int, channels: int, num_convs: int, norm: str) -> nn.Sequential:
    """``num_convs`` x (3x3 conv, norm, ReLU); convs have a bias only without norm."""
    layers = []
    for i in range(num_convs):
        layers.append(
            Conv2d(
                in_channels if i == 0 else channels,
                channels,
                kernel_size=3,
                padding=1,
                bias=not norm,
                norm=get_norm(norm, channels),
                activation=F.relu,
            )
        )
    return nn.Sequential(*layers)


def init_conv(module: nn.Module, bias: float = 0.0):
    """normal(std=0.01) weights and constant biases for every conv in ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, bias)


def dynamic_conv1x1(
    features: torch.Tensor, image_idx: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor = None
) -> torch.Tensor:
    """Per-sample 1x1 convolution: sample k applies ``weights[k]`` to ``features[image_idx[k]]``.

    Args:
        features: Float[B, E, h, w]; image_idx: Long[K]; weights: Float[K, E]; bias: Float[K].
    Returns:
        Float[K, h, w] logits, in the order of ``image_idx``. With K = 0 the (empty) result
        stays connected to ``features`` and ``weights`` in the autograd graph.
    """
    batch, _, height, width = features.shape
    pieces, order = [], []
    for b in range(batch):
        selected = (image_idx == b).nonzero()[:, 0]
        pieces.append(weights[selected] @ features[b].flatten(1))
        order.append(selected)
    logits = torch.cat(pieces)[torch.cat(order).argsort()]
    if bias is not None:
        logits = logits + bias[:, None]
    return logits.view(-1, height, width)


class SOLOHeadBase(nn.Module):
    """Parts shared by all SOLO heads: level split, category branch, cell bookkeeping."""

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
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_grids = list(num_grids)
        self.prior_bias = -math.log((1 - prior_prob) / prior_prob)
        self.cate_tower = conv_tower(in_channels, feat_channels, num_stacked_convs, norm)
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
        }

    @staticmethod
    def split_features(features: List[torch.Tensor]) -> List[torch.Tensor]:
        """[P2 resized x0.5, P3, P4, P5, P6 resized to P5's size] (head strides 8, 8, 16, 32, 32)."""
        first = F.interpolate(features[0], scale_factor=0.5, mode="bilinear", align_corners=False)
        last = F.interpolate(features[-1], size=features[-2].shape[-2:], mode="bilinear", align_corners=False)
        return [first, *features[1:-1], last]

    def category_logits(self, cate_input: torch.Tensor) -> torch.Tensor:
        """Float[B, Cin, S, S] -> Float[B, C, S, S]."""
        return self.cate_pred(self.cate_tower(cate_input))

    def mask_probs(
        self, outputs: SOLOHeadOutputs, level: int, image_idx: torch.Tensor, cells: torch.Tensor
    ) -> torch.Tensor:
        """Mask probabilities of the given cells at one level.

        Args:
            level: level index; image_idx: Long[K] image of each sample; cells: Long[K] flat
                cell index ``i * S + j`` at that level.
        Returns:
            Float[K, h, w] at the level's mask resolution.
        """
        raise NotImplementedError


@register_head("SOLO")
class SOLOHead(SOLOHeadBase):
    """Vanilla SOLO: a CoordConv mask tower and one 1x1 output channel per grid cell."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        in_channels, channels = kwargs["in_channels"], kwargs["feat_channels"]
        self.mask_tower = conv_tower(in_channels + 2, channels, kwargs["num_stacked_convs"], kwargs["norm"])
        self.mask_preds = nn.ModuleList(nn.Conv2d(channels, s * s, kernel_size=1) for s in self.num_grids)
        init_conv(self.mask_tower)
        init_conv(self.mask_preds, bias=self.prior_bias)

    def forward(self, features: List[torch.Tensor]) -> SOLOHeadOutputs:
        cate_logits, mask_features = [], []
        for feature, num_grid in zip(self.split_features(features), self.num_grids):
            mask_feature = self.mask_tower(torch.cat([feature, coord_features(feature)], dim=1))
            mask_features.append(
                F.interpolate(mask_feature, scale_factor=2, mode="bilinear", align_corners=False)
            )
            cate_input = F.interpolate(feature, size=num_grid, mode="bilinear", align_corners=False)
            cate_logits.append(self.category_logits(cate_input))
        return SOLOHeadOutputs(cate_logits, mask_features)

    def mask_probs(self, outputs, level, image_idx, cells):
        conv = self.mask_preds[level]
        logits = dynamic_conv1x1(
            outputs.mask_features[level], image_idx, conv.weight[cells, :, 0, 0], conv.bias[cells]
        )
        return logits.sigmoid()


def build_solo_head(cfg, input_shape: Dict[str, ShapeSpec]) -> SOLOHeadBase:
    """Build the head named by ``cfg.MODEL.SOLO.HEAD``."""
    return SOLO_HEAD_REGISTRY.get(cfg.MODEL.SOLO.HEAD)(cfg, input_shape)
