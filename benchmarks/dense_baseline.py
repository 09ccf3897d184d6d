"""Dense per-object SOLO target builder: the baseline of the ``targets`` section of
``tools/benchmark.py``.

A straightforward re-implementation of the original (mmdetection) SOLO target assignment, the
reference that ``solo_d2.modeling.targets.build_solo_targets`` is benchmarked against:

* a Python loop over the gts of each level and over the cells of each centre region;
* the centre of mass from ``scipy.ndimage.center_of_mass``;
* the full ``S^2 x h x w`` uint8 mask target tensor per level (one copy of the gt mask per
  positive cell), plus a Bool[S^2] positive-cell indicator;
* the padded mask resized per gt and level with
  ``F.interpolate(mask, scale_factor=1 / output_stride, mode="bilinear") >= 0.5``.

Two details follow solo_d2 instead of the original so that both builders agree bit for bit
(checked by :func:`assert_same_targets`): grid cells use solo_d2's float32 rule
``floor((v / size) / fp32(1 / S))`` (``solo_d2.modeling.targets.grid_cell``), and the centre of
mass is expressed in float32 like solo_d2's (the exact integer moment divided in float32).
"""

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["DenseLevelTargets", "build_dense_targets", "assert_same_targets", "cell_of"]

DEFAULT_NUM_GRIDS = (40, 36, 24, 16, 12)
DEFAULT_SCALE_RANGES = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
DEFAULT_STRIDES = (8, 8, 16, 32, 32)


@dataclass
class DenseLevelTargets:
    """Dense targets of one image at one level (the original representation).

    Attributes:
        cate: Long[S, S] class of each cell, background = ``num_classes``.
        masks: Uint8[S^2, h, w] mask target of every cell (zeros for negative cells).
        positive: Bool[S^2] cells with a mask target.
    """

    cate: torch.Tensor
    masks: torch.Tensor
    positive: torch.Tensor


def cell_of(value: np.float32, size: int, num_grid: int) -> int:
    """Grid cell of one float32 coordinate: ``floor((value / size) / fp32(1 / S))`` in float32."""
    quotient = np.float32(value) / np.float32(size)
    return int(np.floor(quotient / np.float32(1.0 / num_grid)))


def _center_of_mass_fp32(mask: np.ndarray, num_pixels: int) -> Tuple[np.float32, np.float32]:
    """(cy, cx) of a binary mask from ``ndimage.center_of_mass``, rounded like solo_d2's.

    scipy divides the exact integer moments in float64; the moment is recovered exactly from
    that quotient (well below 2^53) and divided again in float32.
    """
    cy, cx = ndimage.center_of_mass(mask)
    denom = np.float32(num_pixels)
    moment_y, moment_x = round(cy * num_pixels), round(cx * num_pixels)
    return np.float32(moment_y) / denom, np.float32(moment_x) / denom


def build_dense_targets(
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
) -> List[DenseLevelTargets]:
    """SOLO targets of one image the original way, one :class:`DenseLevelTargets` per level.

    Same arguments as ``build_solo_targets`` (SOLO: one sample per cell, the later gt wins a
    cell; mask targets at half the level stride). ``gt_masks``: Bool/Uint8[N, H, W] padded to
    ``image_size``.
    """
    height, width = image_size
    device = gt_masks.device
    boxes = gt_boxes.to(device=device, dtype=torch.float32)
    # Per-gt quantities were vectorised in the original too.
    sqrt_areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    half_ws = (0.5 * (boxes[:, 2] - boxes[:, 0]) * sigma).cpu().numpy()
    half_hs = (0.5 * (boxes[:, 3] - boxes[:, 1]) * sigma).cpu().numpy()
    masks_np = gt_masks.to(torch.uint8).cpu().numpy()
    labels = gt_classes.tolist()

    levels = []
    for num_grid, (lower, upper), stride in zip(num_grids, scale_ranges, strides):
        output_stride = stride // 2
        mask_size = (height // output_stride, width // output_stride)
        cate = torch.full((num_grid, num_grid), num_classes, dtype=torch.int64, device=device)
        dense = torch.zeros((num_grid**2, *mask_size), dtype=torch.uint8, device=device)
        positive = torch.zeros(num_grid**2, dtype=torch.bool, device=device)
        hits = ((sqrt_areas >= lower) & (sqrt_areas <= upper)).nonzero()[:, 0].tolist()
        for k in hits:
            seg_mask = masks_np[k]
            num_pixels = int(seg_mask.sum())
            if num_pixels < min_mask_pixels:
                continue
            center_h, center_w = _center_of_mass_fp32(seg_mask, num_pixels)
            half_h, half_w = half_hs[k], half_ws[k]
            coord_h = cell_of(center_h, height, num_grid)
            coord_w = cell_of(center_w, width, num_grid)
            top_box = max(0, cell_of(center_h - half_h, height, num_grid))
            down_box = min(num_grid - 1, cell_of(center_h + half_h, height, num_grid))
            left_box = max(0, cell_of(center_w - half_w, width, num_grid))
            right_box = min(num_grid - 1, cell_of(center_w + half_w, width, num_grid))
            top, down = max(top_box, coord_h - 1), min(down_box, coord_h + 1)
            left, right = max(left_box, coord_w - 1), min(right_box, coord_w + 1)

            rows, cols = slice(top, down + 1), slice(left, right + 1)
            cate[rows, cols] = labels[k]
            resized = F.interpolate(
                torch.from_numpy(seg_mask).to(device)[None, None].float(),
                scale_factor=1.0 / output_stride,
                mode="bilinear",
                align_corners=False,
            )[0, 0]
            resized = (resized >= 0.5).to(torch.uint8)
            for i in range(top, down + 1):
                for j in range(left, right + 1):
                    cell = i * num_grid + j
                    dense[cell] = resized
                    positive[cell] = True
        levels.append(DenseLevelTargets(cate=cate, masks=dense, positive=positive))
    return levels


def assert_same_targets(dense_levels: Sequence[DenseLevelTargets], sparse_levels: Sequence) -> None:
    """Raise AssertionError unless the dense targets equal solo_d2's ``LevelTargets``.

    Per level: the same ``cate`` grid, the same positive cells, for every positive cell the same
    mask target, and no mask target on negative cells.
    """
    if len(dense_levels) != len(sparse_levels):
        raise AssertionError(f"{len(dense_levels)} dense levels vs {len(sparse_levels)} levels")
    for level, (dense, sparse) in enumerate(zip(dense_levels, sparse_levels)):
        if not torch.equal(dense.cate, sparse.cate):
            raise AssertionError(f"level {level}: category targets differ")
        cells = dense.positive.nonzero()[:, 0]
        if not torch.equal(cells, sparse.pos.sort().values) or len(sparse.pos.unique()) != len(
            cells
        ):
            raise AssertionError(
                f"level {level}: positive cells differ ({len(cells)} dense, {len(sparse.pos)})"
            )
        if not torch.equal(dense.masks[sparse.pos], sparse.masks[sparse.gt].to(torch.uint8)):
            raise AssertionError(f"level {level}: mask targets of positive cells differ")
        if dense.masks[~dense.positive].any():
            raise AssertionError(f"level {level}: a negative cell has a mask target")
