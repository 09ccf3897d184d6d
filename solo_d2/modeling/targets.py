"""SOLO target assignment (DESIGN.md rules T1-T7), vectorised over instances, on the input's device.

Positives are represented as (cell index, gt index) pairs plus one set of gt masks per level:
the ``S^2 x h x w`` target tensor of the original implementation is never materialised.
"""

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from .mask_ops import count_pixels

__all__ = [
    "LevelTargets",
    "build_solo_targets",
    "build_solov2_targets",
    "center_of_mass",
    "downsample_masks",
    "MASK_TARGET_MODES",
    "grid_cell",
    "assign_centre_regions",
]

# Defaults of the SOLO R50-FPN config (kept in sync with solo_d2.config).
DEFAULT_NUM_GRIDS = (40, 36, 24, 16, 12)
DEFAULT_SCALE_RANGES = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
DEFAULT_STRIDES = (8, 8, 16, 32, 32)


@dataclass
class LevelTargets:
    """Targets of one image at one level.

    Attributes:
        cate:  Long[S, S] class of each cell, background = ``num_classes``.
        pos:   Long[P] flat cell index ``i * S + j`` of each positive mask sample.
        gt:    Long[P] index (into the image's N gts) of the instance whose mask is the target.
        masks: Bool[N, h, w] all gt masks at this level's mask resolution (Float32 in [0, 1]
            unless ``mask_target`` is "binary", see :func:`downsample_masks`).
    """

    cate: torch.Tensor
    pos: torch.Tensor
    gt: torch.Tensor
    masks: torch.Tensor


def _mask_moments(masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rows Long[N, H], cols Long[N, W]): per-row and per-column pixel sums of the masks."""
    if masks.dtype == torch.bool:
        return count_pixels(masks, 2), count_pixels(masks, 1)
    masks = masks.to(torch.int64)
    return masks.sum(dim=2), masks.sum(dim=1)


def _center_from_moments(rows: torch.Tensor, cols: torch.Tensor):
    ys = torch.arange(rows.shape[1], device=rows.device, dtype=torch.int64)
    xs = torch.arange(cols.shape[1], device=cols.device, dtype=torch.int64)
    m00 = rows.sum(dim=1).to(torch.float32).clamp(min=1)
    cx = (cols * xs).sum(dim=1).to(torch.float32) / m00
    cy = (rows * ys).sum(dim=1).to(torch.float32) / m00
    return cx, cy


def center_of_mass(masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Centre of mass of binary masks in pixel-index coordinates.

    Args:
        masks: Bool/Uint8[N, H, W].
    Returns:
        (cx, cy): Float32[N] each. Moments are summed exactly (int64), then divided in float32;
        an empty mask gives (0, 0).
    """
    return _center_from_moments(*_mask_moments(masks))


def grid_cell(coord: torch.Tensor, size: int, num_grid: int) -> torch.Tensor:
    """Grid cell of coordinates: ``floor((coord / size) / fp32(1/S))``, divisions in float32.

    The quotient is rounded to float32 before the floor (rule T3). Note that torch's
    ``t // (1. / S)`` differs exactly on cell boundaries since torch 1.13: it floors the exact
    quotient (e.g. 0.25 // fp32(1/40) = 9, while floor(fp32(0.25 / fp32(1/40))) = 10).
    Returns Long, not clamped.
    """
    t = coord.to(torch.float32) / size
    return torch.floor(t / (1.0 / num_grid)).to(torch.int64)


MASK_TARGET_MODES = ("binary", "half_ties", "area")


def downsample_masks(
    masks: torch.Tensor, output_stride: int, mode: str = "binary"
) -> torch.Tensor:
    """gt masks as mask targets at ``output_stride`` (rule T6 and ``MODEL.SOLO.MASK_TARGET``).

    Args:
        masks: Bool[N, H, W], H and W divisible by ``output_stride``.
        output_stride: 1 or more.
        mode: "binary" (the original): ``interpolate(masks, 1 / output_stride, bilinear) >=
            0.5``; "half_ties": the same, but 0.5 where that bilinear value is exactly 0.5;
            "area": the fraction of the output pixel's ``output_stride`` x ``output_stride``
            input pixels that are set.
    Returns:
        Bool[N, H / output_stride, W / output_stride] for "binary", else Float32 in [0, 1].

    For an even stride s, bilinear sampling (align_corners=False) of output pixel i reads input
    rows/cols ``s*i + s/2 - 1`` and ``s*i + s/2`` with weight 1/2 each: its value is the number
    of those 4 pixels set, over 4 ("binary": at least 2 of them; "half_ties": 0.5 for exactly
    2), computed here from byte sums without a float copy of the masks. At an odd stride the
    sample falls on one input pixel, so no value is exactly 0.5.
    """
    if mode not in MASK_TARGET_MODES:
        raise ValueError(f"unknown mask target mode {mode!r}, expected one of {MASK_TARGET_MODES}")
    masks = masks.bool()
    data = masks.view(torch.uint8)  # 0/1 bytes: sums without casts
    if mode == "area":
        num, height, width = masks.shape
        blocks = data.reshape(num, height // output_stride, output_stride, -1, output_stride)
        return blocks.sum(dim=(2, 4), dtype=torch.int32) / float(output_stride**2)
    if output_stride == 1:
        return masks.clone() if mode == "binary" else masks.float()
    if output_stride % 2:
        resized = F.interpolate(
            masks[:, None].float(),
            scale_factor=1.0 / output_stride,
            mode="bilinear",
            align_corners=False,
        )[:, 0] >= 0.5
        return resized if mode == "binary" else resized.float()
    first, second = output_stride // 2 - 1, output_stride // 2
    rows = data[:, first::output_stride] + data[:, second::output_stride]
    count = rows[:, :, first::output_stride] + rows[:, :, second::output_stride]
    if mode == "binary":
        return count >= 2
    return (count >= 3).to(torch.float32).masked_fill_(count == 2, 0.5)


def assign_centre_regions(
    gt_boxes: torch.Tensor,
    centers: Tuple[torch.Tensor, torch.Tensor],
    image_size: Tuple[int, int],
    num_grid: int,
    sigma: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """All (gt, cell) pairs of the gts' centre regions (rules T3-T4).

    Args:
        gt_boxes: Float[N, 4] XYXY.
        centers: (cx, cy) Float32[N] centres of mass.
        image_size: padded (H, W).
    Returns:
        (gt_idx, cell): Long[K] each, ordered by position in ``gt_boxes``, then row-major cell.
        Each region is at most 3 x 3 cells and always contains the centre cell.
    """
    height, width = image_size
    cx, cy = centers
    boxes = gt_boxes.to(torch.float32)
    half_w = 0.5 * (boxes[:, 2] - boxes[:, 0]) * sigma
    half_h = 0.5 * (boxes[:, 3] - boxes[:, 1]) * sigma
    ci, cj = grid_cell(cy, height, num_grid), grid_cell(cx, width, num_grid)
    top = torch.maximum(grid_cell(cy - half_h, height, num_grid).clamp(min=0), ci - 1)
    down = torch.minimum(grid_cell(cy + half_h, height, num_grid).clamp(max=num_grid - 1), ci + 1)
    left = torch.maximum(grid_cell(cx - half_w, width, num_grid).clamp(min=0), cj - 1)
    right = torch.minimum(grid_cell(cx + half_w, width, num_grid).clamp(max=num_grid - 1), cj + 1)

    offsets = torch.arange(-1, 2, device=boxes.device)
    rows = (ci[:, None] + offsets)[:, :, None].expand(-1, 3, 3)  # [N, 3, 3]
    cols = (cj[:, None] + offsets)[:, None, :].expand(-1, 3, 3)
    inside = (
        (rows >= top[:, None, None])
        & (rows <= down[:, None, None])
        & (cols >= left[:, None, None])
        & (cols <= right[:, None, None])
    )
    gt_idx, row_off, col_off = inside.nonzero(as_tuple=True)  # lexicographic: gt, row, col
    cell = rows[gt_idx, row_off, col_off] * num_grid + cols[gt_idx, row_off, col_off]
    return gt_idx, cell


def build_solo_targets(
    gt_boxes: torch.Tensor,
    gt_classes: torch.Tensor,
    gt_masks: torch.Tensor,
    image_size: Tuple[int, int],
    *,
    num_grids: Sequence[int] = DEFAULT_NUM_GRIDS,
    scale_ranges: Sequence[Sequence[float]] = DEFAULT_SCALE_RANGES,
    strides: Sequence[int] = DEFAULT_STRIDES,
    sigma: float = 0.2,
    num_classes: int = 80,
    min_mask_pixels: int = 10,
    one_sample_per_cell: bool = True,
    mask_output_strides: Sequence[int] = None,
    mask_target: str = "binary",
) -> List[LevelTargets]:
    """SOLO targets of one image, one :class:`LevelTargets` per level.

    Args:
        gt_boxes: Float[N, 4] XYXY input-image pixels (x2 = max_x + 1).
        gt_classes: Long[N] 0-based classes.
        gt_masks: Bool/Uint8[N, H, W] masks already padded to ``image_size``.
        image_size: padded (H, W).
        num_grids, scale_ranges, strides: per level grid size S, inclusive range of
            sqrt(box area), head stride (mask targets are at ``stride / 2`` unless
            ``mask_output_strides`` says otherwise).
        sigma: centre-region scale of the box.
        num_classes: background label of ``cate``.
        min_mask_pixels: masks with fewer pixels make no target.
        one_sample_per_cell: True (SOLO): where centre regions overlap the later gt wins the cell
            and its single mask sample. False (SOLOv2): one sample per (gt, cell) pair.
        mask_output_strides: per level stride of the mask targets (default ``stride // 2``).
        mask_target: how gt masks become mask targets (:func:`downsample_masks`).
    """
    height, width = image_size
    device = gt_masks.device
    if gt_masks.shape[1:] != (height, width):
        raise ValueError(
            f"gt_masks must be padded to image_size {tuple(image_size)}, "
            f"got {tuple(gt_masks.shape[1:])}"
        )
    if not (len(num_grids) == len(scale_ranges) == len(strides)):
        raise ValueError("num_grids, scale_ranges and strides need one entry per level")
    if mask_output_strides is None:
        mask_output_strides = [s // 2 for s in strides]
    gt_boxes = gt_boxes.to(device=device, dtype=torch.float32)
    gt_classes = gt_classes.to(device=device, dtype=torch.int64)
    gt_masks = gt_masks.bool()

    sqrt_areas = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])).sqrt()
    rows, cols = _mask_moments(gt_masks)
    has_pixels = rows.sum(dim=1) >= min_mask_pixels
    centers = _center_from_moments(rows, cols)
    resized = {}  # gt masks per output stride, shared by levels with the same mask resolution

    levels = []
    for num_grid, (lower, upper), output_stride in zip(
        num_grids, scale_ranges, mask_output_strides
    ):
        if output_stride not in resized:
            resized[output_stride] = downsample_masks(gt_masks, output_stride, mask_target)
        cate = torch.full((num_grid, num_grid), num_classes, dtype=torch.int64, device=device)
        candidates = ((sqrt_areas >= lower) & (sqrt_areas <= upper) & has_pixels).nonzero()[:, 0]
        gt_idx, cell = assign_centre_regions(
            gt_boxes[candidates],
            (centers[0][candidates], centers[1][candidates]),
            image_size,
            num_grid,
            sigma,
        )
        gt_idx = candidates[gt_idx]
        # Pairs are ordered by gt index, so the last write to a cell is the later gt's.
        winner = torch.full((num_grid * num_grid,), -1, dtype=torch.int64, device=device)
        winner.scatter_reduce_(0, cell, gt_idx, reduce="amax")
        cells_won = (winner >= 0).nonzero()[:, 0]
        cate.view(-1)[cells_won] = gt_classes[winner[cells_won]]
        if one_sample_per_cell:
            pos, gt = cells_won, winner[cells_won]
        else:
            pos, gt = cell, gt_idx
        levels.append(LevelTargets(cate=cate, pos=pos, gt=gt, masks=resized[output_stride]))
    return levels


def build_solov2_targets(
    gt_boxes: torch.Tensor,
    gt_classes: torch.Tensor,
    gt_masks: torch.Tensor,
    image_size: Tuple[int, int],
    *,
    num_grids: Sequence[int] = DEFAULT_NUM_GRIDS,
    scale_ranges: Sequence[Sequence[float]] = DEFAULT_SCALE_RANGES,
    strides: Sequence[int] = DEFAULT_STRIDES,
    sigma: float = 0.2,
    num_classes: int = 80,
    min_mask_pixels: int = 10,
    mask_output_stride: int = 4,
    mask_target: str = "binary",
) -> List[LevelTargets]:
    """SOLOv2 targets: as :func:`build_solo_targets`, but one mask sample per (gt, cell) pair.

    Per level: ``cate`` Long[S, S] (a cell covered by several gts has the later gt's class);
    ``pos`` Long[K] cell of each sample (may repeat; ordered by gt index, then row-major cell);
    ``gt`` Long[K]; ``masks`` Bool[N, H / 4, W / 4] (the unified mask-feature resolution).
    """
    return build_solo_targets(
        gt_boxes,
        gt_classes,
        gt_masks,
        image_size,
        num_grids=num_grids,
        scale_ranges=scale_ranges,
        strides=strides,
        sigma=sigma,
        num_classes=num_classes,
        min_mask_pixels=min_mask_pixels,
        one_sample_per_cell=False,
        mask_output_strides=[mask_output_stride] * len(num_grids),
        mask_target=mask_target,
    )
