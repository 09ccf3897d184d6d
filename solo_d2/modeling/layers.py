"""Building blocks shared by the SOLO heads."""

from typing import Collection, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from detectron2.layers import Conv2d, get_norm

__all__ = [
    "ModulatedDeformConv2d",
    "PerLevelNorm",
    "append_zero_item",
    "at_level",
    "conv_tower",
    "coord_features",
    "init_conv",
    "is_exporting",
    "per_sample_conv",
    "resize_probs",
]


def is_exporting() -> bool:
    """True while the model is traced or exported (``torch.jit.trace``, ``torch.onnx.export``,
    ``torch.export``). The data-dependent inference steps then take their graph form: no Python
    branch or loop on the number of candidates / detections (which may be 0) and no byte-level
    tricks; eager runs keep their faster forms (DESIGN.md section 1, "Export")."""
    compiler = getattr(torch, "compiler", None)
    return (
        torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or bool(compiler is not None and getattr(compiler, "is_exporting", bool)())
    )


def append_zero_item(x: torch.Tensor) -> torch.Tensor:
    """``x`` [K, ...] with one all-zero item appended: [K + 1, ...], for K = 0 too (traceable).

    The exported graph uses it before a conv with K (possibly 0) filters, which torch refuses
    for K = 0, and drops the extra output item after it."""
    return torch.cat([x, torch.zeros_like(x[:1].sum(dim=0, keepdim=True))])


def coord_features(feature: torch.Tensor) -> torch.Tensor:
    """CoordConv channels [x, y] for ``feature`` [B, C, H, W]: linspace(-1, 1) over W and H.

    Returns Float[B, 2, H, W].
    """
    batch, _, height, width = feature.shape
    xs = torch.linspace(-1, 1, width, device=feature.device, dtype=feature.dtype)
    ys = torch.linspace(-1, 1, height, device=feature.device, dtype=feature.dtype)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y])[None].expand(batch, -1, -1, -1)


class ModulatedDeformConv2d(nn.Conv2d):
    """Modulated deformable convolution (DCNv2) on ``torchvision.ops.deform_conv2d``.

    Runs on CPU and CUDA (Detectron2 v0.6's DeformConv needs its C++ ops). A 3x3 conv
    predicts 2 * k * k offsets and k * k modulation masks (sigmoid); both start at zero
    offsets / 0.5 masks. Optional ``norm`` and ``activation`` like Detectron2's ``Conv2d``.
    """

    def __init__(self, *args, norm: Optional[nn.Module] = None, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.offset_weight = nn.Parameter(
            torch.zeros(3 * taps, self.in_channels, *self.kernel_size)
        )
        self.offset_bias = nn.Parameter(torch.zeros(3 * taps))

    def forward(self, x):
        offset_mask = F.conv2d(
            x, self.offset_weight, self.offset_bias, self.stride, self.padding, self.dilation
        )
        taps = self.kernel_size[0] * self.kernel_size[1]
        offset, mask = offset_mask[:, : 2 * taps], offset_mask[:, 2 * taps :].sigmoid()
        x = deform_conv2d(
            x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask=mask
        )
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class PerLevelNorm(nn.Module):
    """One norm layer per FPN level after a conv that the levels share: ``norms[level]`` is
    applied, ``level`` being set by :func:`at_level` before the tower runs on that level's
    feature. With BatchNorm, each level then keeps its own running statistics (and affine
    parameters) instead of one average of levels whose statistics differ."""

    def __init__(self, norms: Sequence[nn.Module]):
        super().__init__()
        self.norms = nn.ModuleList(norms)
        self.level = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[self.level](x)


def at_level(tower: nn.Module, level: int) -> nn.Module:
    """``tower`` with the norms of ``level`` selected in its :class:`PerLevelNorm` layers (a
    no-op for a tower without them)."""
    for module in tower.modules():
        if isinstance(module, PerLevelNorm):
            module.level = level
    return tower


def conv_tower(
    in_channels: int,
    channels: int,
    num_convs: int,
    norm: str,
    deformable: Collection[int] = (),
    num_levels: int = 1,
) -> nn.Sequential:
    """``num_convs`` x (3x3 conv, norm, ReLU); convs have a bias only without norm.

    ``deformable``: indices of the layers that are modulated deformable convs.
    ``num_levels`` > 1: each conv gets a :class:`PerLevelNorm` of that many norm layers (run
    the tower through :func:`at_level`).
    """

    def make_norm():
        if num_levels > 1 and norm:
            return PerLevelNorm([get_norm(norm, channels) for _ in range(num_levels)])
        return get_norm(norm, channels)

    layers = []
    for i in range(num_convs):
        conv_class = ModulatedDeformConv2d if i in deformable else Conv2d
        layers.append(
            conv_class(
                in_channels if i == 0 else channels,
                channels,
                kernel_size=3,
                padding=1,
                bias=not norm,
                norm=make_norm(),
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


def per_sample_conv(
    features: torch.Tensor,
    image_idx: torch.Tensor,
    weights: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Sample k convolves ``features[image_idx[k]]`` with its own filter ``weights[k]``.

    Args:
        features: Float[B, C, h, w]; image_idx: Long[K]; weights: Float[K, C, k, k] (odd k,
            "same" padding); bias: Float[K] or None.
    Returns:
        Float[K, h, w] in the order of ``image_idx``. An empty result stays connected to the
        autograd graph of ``features``, ``weights`` and ``bias`` (every parameter gets a
        gradient, as DistributedDataParallel requires).
    """
    if is_exporting():
        # The exported graph runs one image: one conv with the K filters. K may be 0, which a
        # conv does not take: one zero filter is appended, and its output dropped.
        weights = append_zero_item(weights)
        bias = None if bias is None else append_zero_item(bias)
        return F.conv2d(features, weights, bias, padding=weights.shape[-1] // 2)[0, :-1]
    batch, _, height, width = features.shape
    # One unbind, not B slices: its backward stacks the B gradients once instead of adding B
    # zero-padded full-size ones (a large part of a SOLOv2 step at H/2).
    per_image = features.unbind(0)
    pieces, order = [], []
    for b in range(batch):
        selected = (image_idx == b).nonzero()[:, 0]
        if len(selected):
            out = F.conv2d(
                per_image[b][None],
                weights[selected],
                None if bias is None else bias[selected],
                padding=weights.shape[-1] // 2,
            )[0]
        else:
            anchor = per_image[b].sum() + weights.sum() + (0 if bias is None else bias.sum())
            out = features.new_zeros((0, height, width)) + 0 * anchor
        pieces.append(out)
        order.append(selected)
    result, order = (pieces[0], order[0]) if batch == 1 else (torch.cat(pieces), torch.cat(order))
    if torch.equal(order, torch.arange(len(order), device=order.device)):
        return result  # samples already grouped by image (always at inference): no reordering copy
    return result[order.argsort()]


def resize_probs(probs: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
    """Bilinear resize of Float[K, h, w] to ``size`` (no-op when None or equal)."""
    if size is None or tuple(probs.shape[-2:]) == tuple(size):
        return probs
    if is_exporting() or len(probs) == 0:
        # K may be 0 (in the graph too): K as the batch dim (an empty batch is valid, an empty
        # channel dim is not). Same values, up to float rounding.
        probs = F.interpolate(probs[:, None], size=size, mode="bilinear", align_corners=False)
        return probs.flatten(0, 1)  # a reshape (squeeze exports as a copy inside an If)
    return F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
