"""SOLOv2 (DESIGN.md rule N4): dynamic per-cell kernels and the unified mask-feature branch."""

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, get_norm

from .heads import SOLOHeadBase, SOLOHeadOutputs, register_head
from .layers import (
    ModulatedDeformConv2d,
    at_level,
    conv_tower,
    coord_features,
    init_conv,
    per_sample_conv,
    resize_probs,
)

__all__ = ["MaskFeatureBranch", "SOLOv2Head"]


class MaskFeatureBranch(nn.Module):
    """SOLOv2's unified mask features at stride 4 from P2..P5.

    Level k: 3x3 conv-norm-ReLU then k x (x2 bilinear upsample [+ 3x3 conv-norm-ReLU before
    each further upsample]); the coarsest level gets CoordConv [x, y] before its first conv.
    The levels are summed, then a 1x1 conv-norm-ReLU gives ``out_channels`` (E). With
    ``deformable`` every conv, the 1x1 one included, is a modulated deformable conv. With
    ``stride`` 2 (solo_d2; 4 is the original) the sum is upsampled x2 (bilinear) and refined by
    a 3x3 conv-norm-ReLU before the 1x1 conv: masks at H/2.
    """

    def __init__(
        self, in_channels, channels, out_channels, num_levels, norm, deformable=False, stride=4
    ):
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f"MODEL.SOLO.MASK_FEATURE_STRIDE must be 4 or 2, got {stride}")
        self.refine = None
        if stride == 2:
            self.refine = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                conv_tower(channels, channels, 1, norm),
            )
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
        if self.refine is not None:
            fused = self.refine(fused)
        return self.predictor(fused)


@register_head("SOLOv2")
class SOLOv2Head(SOLOHeadBase):
    """SOLOv2: per-cell dynamic 1x1 kernels applied to one unified mask-feature map at H/4
    (H/2 with ``MODEL.SOLO.MASK_FEATURE_STRIDE 2``).

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
        mask_feature_stride: int = 4,
        mask_output_stride: int = 0,
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
            stride=mask_feature_stride,  # validated there
        )
        mask_output_stride = mask_output_stride or mask_feature_stride
        if mask_output_stride not in (1, 2, 4) or mask_feature_stride % mask_output_stride:
            raise ValueError(
                "MODEL.SOLO.MASK_OUTPUT_STRIDE must be 0 or 1, 2 or 4 and divide "
                f"MODEL.SOLO.MASK_FEATURE_STRIDE ({mask_feature_stride}), got {mask_output_stride}"
            )
        # The masks' stride (targets, Dice, inference); the features are upsampled by this
        # factor before the dynamic convs.
        self.mask_stride = mask_output_stride
        self.mask_upsample = mask_feature_stride // mask_output_stride

    @classmethod
    def from_config(cls, cfg, input_shape):
        args = super().from_config(cfg, input_shape)
        args.update(
            kernel_channels=cfg.MODEL.SOLO.KERNEL_CHANNELS,
            mask_feature_channels=cfg.MODEL.SOLO.MASK_FEATURE_CHANNELS,
            num_mask_feature_levels=cfg.MODEL.SOLO.NUM_MASK_FEATURE_LEVELS,
            use_dcn_in_mask_features=cfg.MODEL.SOLO.USE_DCN_IN_MASK_FEATURES,
            mask_feature_stride=cfg.MODEL.SOLO.MASK_FEATURE_STRIDE,
            mask_output_stride=cfg.MODEL.SOLO.MASK_OUTPUT_STRIDE,
        )
        return args

    def target_mask_strides(self, level_strides):
        return [self.mask_stride] * len(level_strides)

    def forward(self, features):
        outputs = super().forward(features)
        # The unified map reads the original P2..P5 (not the split levels).
        mask_features = self.mask_features(features[: self.num_mask_feature_levels])
        if self.mask_upsample > 1:
            # MASK_OUTPUT_STRIDE: the dynamic convs are 1x1, and a 1x1 conv commutes with a
            # per-channel bilinear resize, so upsampling the E feature channels once gives each
            # sample's logits upsampled, for far less work than resizing K masks (and their
            # gradients) when K >> E.
            mask_features = F.interpolate(
                mask_features, scale_factor=self.mask_upsample, mode="bilinear", align_corners=False
            )
        return SOLOHeadOutputs(outputs.cate_logits, [(k, mask_features) for k in outputs.mask_data])

    def forward_mask(self, levels):
        kernels = []
        for k, (f, num_grid) in enumerate(zip(levels, self.num_grids)):
            kernel_input = F.interpolate(
                torch.cat([f, coord_features(f)], dim=1),
                size=num_grid,
                mode="bilinear",
                align_corners=False,
            )
            kernels.append(self.kernel_pred(at_level(self.kernel_tower, k)(kernel_input)))
        return kernels

    def mask_probs(self, outputs, level, image_idx, cells, out_size=None):
        kernel_map, mask_features = outputs.mask_data[level]
        kernels = kernel_map.flatten(2)[image_idx, :, cells]  # [K, E]
        logits = per_sample_conv(mask_features, image_idx, kernels[:, :, None, None])
        return resize_probs(logits.sigmoid(), out_size)
