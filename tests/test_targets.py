"""Tests for SOLO target assignment (solo_d2.modeling.targets) against DESIGN.md rules T1-T7.

Every expectation is worked out by hand (see the comments) or by the plain per-object Python
re-implementation of the original algorithm at the bottom of this file; the code under test is
never used to produce an expected value.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from solo_d2.modeling.targets import (
    build_solo_targets,
    center_of_mass,
    downsample_masks,
    grid_cell,
)

NUM_CLASSES = 10
# One level, S = 8 on a 64 x 64 image: cells are 8 px and 1/8 is exact in float32, so
# cell(v) = floor(v / 8) exactly and hand computations need no rounding analysis.
ONE_LEVEL = dict(num_grids=(8,), scale_ranges=((1, 2048),), strides=(8,), num_classes=NUM_CLASSES)
DEFAULT_OUTPUT_STRIDES = (4, 4, 8, 16, 16)


def _rect(height, width, rows, cols):
    """Bool[height, width] mask with ``rows`` x ``cols`` (python ranges / slices) set."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[rows, cols] = True
    return mask


def _build(masks, boxes, classes, image_size, **kwargs):
    masks = torch.stack(masks) if masks else torch.zeros((0, *image_size), dtype=torch.bool)
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    classes = torch.tensor(classes, dtype=torch.int64)
    return build_solo_targets(boxes, classes, masks, image_size, **kwargs)


def _cells(num_grid, rows, cols):
    return [i * num_grid + j for i in rows for j in cols]


def _assert_level(level, num_grid, pos, gt, classes):
    """pos/gt as listed; cate = classes[gt] on pos, background elsewhere."""
    assert level.pos.tolist() == pos
    assert level.gt.tolist() == gt
    expected = torch.full((num_grid * num_grid,), NUM_CLASSES, dtype=torch.int64)
    for cell, g in zip(pos, gt):
        expected[cell] = classes[g]
    assert torch.equal(level.cate.flatten(), expected)


# ----------------------------------------------------------------------------------------------
# Rule 1: scale ranges on sqrt(box area), both ends inclusive; overlapping ranges.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "box_w, box_h, levels",
    [
        (32, 72, {0, 1}),  # sqrt = 48 exactly: lower end of (48, 192) and inside (1, 96)
        (47, 49, {0}),  # sqrt(2303) = 47.99 < 48: level 0 only
        (96, 96, {0, 1, 2}),  # 96 = upper of (1, 96), inside (48, 192), lower of (96, 384)
        (97, 97, {1, 2}),  # 97 > 96: not level 0
    ],
)
def test_t1_scale_ranges_inclusive(box_w, box_h, levels):
    size = (128, 128)
    mask = _rect(*size, slice(10, 10 + box_h), slice(20, 20 + box_w))
    box = [20, 10, 20 + box_w, 10 + box_h]
    out = _build([mask], [box], [3], size, num_classes=NUM_CLASSES)
    assert len(out) == 5
    for index, level in enumerate(out):
        if index in levels:
            assert len(level.pos) > 0, index
            assert (level.cate.flatten()[level.pos] == 3).all()
            assert (level.gt == 0).all()
        else:
            assert len(level.pos) == 0 and len(level.gt) == 0, index
            assert (level.cate == NUM_CLASSES).all()


def test_t1_custom_ranges_both_ends_inclusive():
    # sqrt(10 * 10) = 10 is the upper end of (1, 10) and the lower end of (10, 20): both levels.
    # A 3 x 3 box (sqrt 3) is outside (4, 10) and (10, 20) even though its mask has 10 pixels.
    size = (64, 64)
    kwargs = dict(num_grids=(8, 8, 8), scale_ranges=((1, 10), (10, 20), (4, 9)),
                  strides=(8, 8, 8), num_classes=NUM_CLASSES)
    big = _rect(*size, slice(20, 30), slice(20, 30))
    out = _build([big], [[20, 20, 30, 30]], [1], size, **kwargs)
    assert [len(lv.pos) > 0 for lv in out] == [True, True, False]
    small = _rect(*size, slice(40, 42), slice(40, 45))  # 10 pixels
    out = _build([small], [[40, 40, 43, 43]], [1], size, **kwargs)
    assert [len(lv.pos) > 0 for lv in out] == [True, False, False]


# ----------------------------------------------------------------------------------------------
# Rule 2: centre of mass, pixel-index coordinates, full-resolution padded mask, float32.
# ----------------------------------------------------------------------------------------------
def test_t2_center_of_mass_asymmetric_l_shape():
    # Pixels (y, x): (0..3, 0) and (3, 1..3): 7 pixels.
    # sum x = 1 + 2 + 3 = 6 -> cx = 6/7; sum y = 0+1+2+3 + 3*3 = 15 -> cy = 15/7.
    # (box centre would be (2, 2); with the "+0.5" convention it would be (6/7 + .5, 15/7 + .5)).
    mask = torch.zeros(1, 6, 5, dtype=torch.bool)
    mask[0, 0:4, 0] = True
    mask[0, 3, 1:4] = True
    cx, cy = center_of_mass(mask)
    assert cx.dtype == torch.float32 and cy.dtype == torch.float32
    assert cx.shape == (1,) and cy.shape == (1,)
    assert cx.item() == np.float32(6 / 7)
    assert cy.item() == np.float32(15 / 7)
    # uint8 input gives the same, batched independently.
    both = torch.stack([mask[0], _rect(6, 5, slice(1, 2), slice(4, 5))]).to(torch.uint8)
    cx, cy = center_of_mass(both)
    assert cx.tolist() == [np.float32(6 / 7), 4.0]
    assert cy.tolist() == [np.float32(15 / 7), 1.0]


def test_t2_centre_of_mass_not_box_centre_drives_region():
    # L: rows 0..39 x cols 0..7 (320 px) + rows 32..39 x cols 8..39 (256 px), box (0, 0, 40, 40).
    # cx = (320*3.5 + 256*23.5)/576 = 12.389, cy = (320*19.5 + 256*35.5)/576 = 26.611.
    # half = 0.5*40*0.2 = 4.  rows: cell(26.61)=3, cell(22.61)=2, cell(30.61)=3 -> 2..3
    # cols: cell(12.39)=1, cell(8.39)=1, cell(16.39)=2 -> 1..2.
    # (The box centre (20, 20) would give rows 2..3, cols 2..3.)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[0:40, 0:8] = True
    mask[32:40, 8:40] = True
    out = _build([mask], [[0, 0, 40, 40]], [4], (64, 64), **ONE_LEVEL)
    _assert_level(out[0], 8, _cells(8, [2, 3], [1, 2]), [0] * 4, [4])


def test_t2_pixel_index_not_pixel_centre_and_t4_single_cell():
    # Mask rows 0..4 x cols 7..8 (10 px): cx = 7.5, cy = 2 (pixel-index coordinates).
    # Box (7, 0, 9, 5): half_w = 0.5*2*0.2 = 0.2, half_h = 0.5.
    # cols: cell(7.5) = 0, cell(7.3) = 0, cell(7.7) = 0; rows: cell(2)=cell(1.5)=cell(2.5)=0.
    # -> a single cell (0, 0).  With x + 0.5 the centre would be 8.0 -> cell 1 and cols 0..1.
    mask = _rect(64, 64, slice(0, 5), slice(7, 9))
    out = _build([mask], [[7, 0, 9, 5]], [2], (64, 64), **ONE_LEVEL)
    _assert_level(out[0], 8, [0], [0], [2])


# ----------------------------------------------------------------------------------------------
# Rule 3: cell(v, size) = floor((v / size) / fp32(1/S)) in float32.
# ----------------------------------------------------------------------------------------------
def _np_cell(v, size, num_grid):
    """Independent float32 evaluation of the rule T3 formula."""
    f32 = np.float32
    return int(np.floor(f32(f32(v) / f32(size)) / f32(1.0 / num_grid)))


def test_t3_grid_cell_hand_values():
    # 31/128 = 0.2421875; / 0.025 = 9.6875 -> 9.
    assert grid_cell(torch.tensor([31.0]), 128, 40).tolist() == [9]
    # -0.5/128 / 0.025 = -0.156 -> floor = -1 (no clamping in cell()).
    assert grid_cell(torch.tensor([-0.5]), 128, 40).tolist() == [-1]
    assert grid_cell(torch.tensor([0.0]), 128, 40).tolist() == [0]
    # 127/128 / (1/16) = 15.875 -> 15 (powers of two: exact).
    assert grid_cell(torch.tensor([127.0]), 128, 16).tolist() == [15]
    assert grid_cell(torch.tensor([31.0]), 128, 40).dtype == torch.int64


def test_t3_grid_cell_exactly_on_cell_boundary():
    # 32/128 = 0.25 exactly; fp32(1/40) = 0.025000000372529; 0.25 / 0.025000000372529 =
    # 9.99999985..., which rounds to 10.0 in float32 (ulp(10) = 9.5e-7) -> floor = 10.
    assert grid_cell(torch.tensor([32.0]), 128, 40).tolist() == [10]
    # 64/128 = 0.5; fp32(1/12) = 0.0833333358; 0.5 / 0.0833333358 = 5.99999983 -> 6.0 -> 6.
    assert grid_cell(torch.tensor([64.0]), 128, 12).tolist() == [6]
    # 0.25 with S = 36: 0.25 / fp32(1/36) = 8.99999988 -> 9.0 in float32 -> 9.
    assert grid_cell(torch.tensor([200.0]), 800, 36).tolist() == [9]


def test_t3_grid_cell_matches_float32_formula():
    # Every quarter-pixel coordinate (incl. all exact cell boundaries) for the default grids.
    mismatches = []
    for size in (96, 128, 800):
        values = np.arange(-8, 4 * size + 1, dtype=np.float32) / 4
        for num_grid in (40, 36, 24, 16, 12):
            got = grid_cell(torch.from_numpy(values), size, num_grid).tolist()
            for value, cell in zip(values.tolist(), got):
                expected = _np_cell(value, size, num_grid)
                if cell != expected:
                    mismatches.append((value, size, num_grid, cell, expected))
    assert not mismatches, f"{len(mismatches)} (v, size, S, got, expected): {mismatches[:8]}"


def test_t3_centre_on_cell_boundary_in_build_targets():
    # Default config, 128 x 128.  Mask rows 7..57 (51 rows) x cols 30..34 (5 cols), 255 px:
    # cy = cx = 32 exactly; box (30, 7, 35, 58), sqrt(5*51) = 15.97 -> level 0 only (S = 40).
    # ci = cj = cell(32, 128) = 10 (see the boundary test above).
    # half_h = 0.5*51*0.2 = 5.1: cell(26.9) = floor(8.41) = 8, cell(37.1) = floor(11.59) = 11
    #   top = max(0, 8, 10-1) = 9, down = min(39, 11, 10+1) = 11.
    # half_w = 0.5: cell(31.5) = floor(9.84) = 9, cell(32.5) = floor(10.16) = 10
    #   left = max(0, 9, 9) = 9, right = min(39, 10, 11) = 10.
    mask = _rect(128, 128, slice(7, 58), slice(30, 35))
    out = _build([mask], [[30, 7, 35, 58]], [5], (128, 128), num_classes=NUM_CLASSES)
    _assert_level(out[0], 40, _cells(40, [9, 10, 11], [9, 10]), [0] * 6, [5])
    for level in out[1:]:
        assert len(level.pos) == 0


# ----------------------------------------------------------------------------------------------
# Rule 4: centre region, clamped to the image and to 3 x 3 around the centre cell.
# ----------------------------------------------------------------------------------------------
def test_t4_region_clamped_at_top_left_border():
    # Mask rows/cols 0..9, box (0, 0, 10, 10), sigma = 2 -> half = 10.  c = 4.5 -> cell 0.
    # cell(-5.5) = -1, cell(14.5) = 1 -> top = max(0, -1, -1) = 0, down = min(7, 1, 1) = 1.
    mask = _rect(64, 64, slice(0, 10), slice(0, 10))
    out = _build([mask], [[0, 0, 10, 10]], [1], (64, 64), sigma=2.0, **ONE_LEVEL)
    _assert_level(out[0], 8, _cells(8, [0, 1], [0, 1]), [0] * 4, [1])


def test_t4_region_clamped_at_bottom_right_border():
    # Mask rows/cols 54..63, half = 10, c = 58.5 -> cell 7; cell(48.5) = 6, cell(68.5) = 8
    # -> down = min(7, 8, 8) = 7: rows/cols 6..7.
    mask = _rect(64, 64, slice(54, 64), slice(54, 64))
    out = _build([mask], [[54, 54, 64, 64]], [1], (64, 64), sigma=2.0, **ONE_LEVEL)
    _assert_level(out[0], 8, _cells(8, [6, 7], [6, 7]), [0] * 4, [1])


def test_t4_region_at_most_3x3_custom_sigma():
    # Mask rows/cols 28..35, sigma = 4 -> half = 16; c = 31.5 -> cell 3; cell(15.5) = 1,
    # cell(47.5) = 5 -> clamped to 3 +- 1: rows/cols 2..4.
    mask = _rect(64, 64, slice(28, 36), slice(28, 36))
    out = _build([mask], [[28, 28, 36, 36]], [1], (64, 64), sigma=4.0, **ONE_LEVEL)
    _assert_level(out[0], 8, _cells(8, [2, 3, 4], [2, 3, 4]), [0] * 9, [1])


def test_t4_region_at_most_3x3_default_config():
    # 96 x 96 square at rows/cols 16..111 of a 128 x 128 image, c = 63.5, half = 9.6.
    # 63.5/128 = 0.49609, 53.9/128 = 0.42109, 73.1/128 = 0.57109.
    # S=40: cells 19.84->19, 16.84->16, 22.84->22: top = max(0,16,18) = 18, down = min(39,22,20)
    # S=36: 17.86->17, 15.16->15, 20.56->20: 16..18.  S=24: 11.91->11, 10.11->10, 13.71->13:
    # 10..12.  sqrt = 96 is on levels 0, 1, 2 (rule 1).
    mask = _rect(128, 128, slice(16, 112), slice(16, 112))
    out = _build([mask], [[16, 16, 112, 112]], [7], (128, 128), num_classes=NUM_CLASSES)
    for level, num_grid, first in zip(out, (40, 36, 24), (18, 16, 10)):
        span = [first, first + 1, first + 2]
        _assert_level(level, num_grid, _cells(num_grid, span, span), [0] * 9, [7])
    assert len(out[3].pos) == 0 and len(out[4].pos) == 0


def test_t4_region_clamped_at_top_border_default_sigma():
    # Top strip rows 0..3 x cols 0..63 (256 px) + col 0 rows 4..39 (36 px); box (0,0,64,40).
    # cy = (256*1.5 + 36*21.5)/292 = 3.966, cx = 256*31.5/292 = 27.616; half_h = 4, half_w = 6.4
    # rows: cell(3.966) = 0, cell(-0.034) = -1 -> top = max(0, -1, -1) = 0; cell(7.966) = 0.
    # cols: cell(27.6) = 3, cell(21.2) = 2, cell(34.0) = 4 -> 2..4.
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[0:4, :] = True
    mask[4:40, 0] = True
    out = _build([mask], [[0, 0, 64, 40]], [6], (64, 64), **ONE_LEVEL)
    _assert_level(out[0], 8, _cells(8, [0], [2, 3, 4]), [0] * 3, [6])


# ----------------------------------------------------------------------------------------------
# Rule 5: later gt wins overlapping cells (class and mask); SOLOv2 keeps (gt, cell) pairs.
# ----------------------------------------------------------------------------------------------
# big: rows/cols 8..39, c = 23.5 -> cell 2, half 3.2: cell(20.3) = 2, cell(26.7) = 3 -> 2..3.
# small: rows/cols 20..35, c = 27.5 -> cell 3, half 1.6: cell(25.9) = cell(29.1) = 3 -> (3, 3).
BIG = (_rect(64, 64, slice(8, 40), slice(8, 40)), [8, 8, 40, 40])
SMALL = (_rect(64, 64, slice(20, 36), slice(20, 36)), [20, 20, 36, 36])
BIG_CELLS = _cells(8, [2, 3], [2, 3])  # 18, 19, 26, 27
SMALL_CELL = 27


def test_t5_later_gt_wins_class_and_mask():
    out = _build([BIG[0], SMALL[0]], [BIG[1], SMALL[1]], [5, 2], (64, 64), **ONE_LEVEL)
    _assert_level(out[0], 8, BIG_CELLS, [0, 0, 0, 1], [5, 2])
    assert out[0].cate[3, 3].item() == 2


def test_t5_later_gt_wins_regardless_of_size():
    out = _build([SMALL[0], BIG[0]], [SMALL[1], BIG[1]], [2, 5], (64, 64), **ONE_LEVEL)
    _assert_level(out[0], 8, BIG_CELLS, [1, 1, 1, 1], [2, 5])


def test_t5_one_sample_per_gt_cell_pair_solov2():
    out = _build([BIG[0], SMALL[0]], [BIG[1], SMALL[1]], [5, 2], (64, 64),
                 one_sample_per_cell=False, **ONE_LEVEL)
    level = out[0]
    # every (gt, cell) pair, ordered by gt then row-major cell; cell 27 appears twice.
    assert level.pos.tolist() == BIG_CELLS + [SMALL_CELL]
    assert level.gt.tolist() == [0, 0, 0, 0, 1]
    assert level.cate[3, 3].item() == 2  # still the later gt's class
    assert level.cate[2, 2].item() == 5
    assert (level.cate == NUM_CLASSES).sum().item() == 64 - 4


def test_t5_mask_target_is_the_winning_gts_mask():
    out = _build([BIG[0], SMALL[0]], [BIG[1], SMALL[1]], [5, 2], (64, 64), **ONE_LEVEL)
    level = out[0]
    # output stride 4: the downsampled gt masks (rule 6 formula, computed here independently).
    small_ds = F.interpolate(SMALL[0][None, None].float(), scale_factor=0.25,
                             mode="bilinear", align_corners=False)[0, 0] >= 0.5
    index = level.pos.tolist().index(SMALL_CELL)
    assert torch.equal(level.masks[level.gt[index]], small_ds)


# ----------------------------------------------------------------------------------------------
# Rule 6: mask targets from the padded mask at H / output_stride; empty targets stay positive.
# ----------------------------------------------------------------------------------------------
def test_t6_padding_uses_padded_size_and_padded_mask():
    # Valid image 60 x 90, padded to 64 x 96.  Mask rows 40..59 x cols 60..89 (touches the
    # valid border), box (60, 40, 90, 60), sqrt(600) = 24.5 -> level 0 (S = 40) only.
    # cy = 49.5, cx = 74.5, half_h = 2, half_w = 3, all against the PADDED size:
    # rows: 49.5/64 = .7734 -> 30.94 -> 30; 47.5 -> 29.69 -> 29; 51.5 -> 32.19 -> 32
    #   top = max(0, 29, 29) = 29, down = min(39, 32, 31) = 31
    # cols: 74.5/96 -> 31.04 -> 31; 71.5 -> 29.79 -> 29; 77.5 -> 32.29 -> 32 -> 30..32
    # (against the unpadded 60 rows the centre row would be 33.)
    size = (64, 96)
    mask = _rect(*size, slice(40, 60), slice(60, 90))
    out = _build([mask], [[60, 40, 90, 60]], [8], size, num_classes=NUM_CLASSES)
    _assert_level(out[0], 40, _cells(40, [29, 30, 31], [30, 31, 32]), [0] * 9, [8])
    for level, stride in zip(out, DEFAULT_OUTPUT_STRIDES):
        assert level.masks.shape == (1, 64 // stride, 96 // stride)
    # Output pixel (i, j) at /4 averages rows 4i+1, 4i+2 and cols 4j+1, 4j+2 (weights 1/2).
    # rows 40..59 -> i = 10..14 (i = 15 reads padded rows 61, 62); cols 60..89 -> j = 15..22
    # (j = 22 reads cols 89 (set) and 90 (padding): 2 of 4 pixels = 0.5 >= 0.5 -> True).
    expected = torch.zeros(16, 24, dtype=torch.bool)
    expected[10:15, 15:23] = True
    assert torch.equal(out[0].masks[0], expected)
    assert torch.equal(out[1].masks[0], expected)


def test_t6_all_zero_downsampled_mask_still_positive():
    # One-pixel-high line at row 4, cols 10..49 (40 px), box (10, 4, 50, 5), sqrt 6.3 -> level 0.
    # At /4 output rows read input rows (1, 2), (5, 6), ...: row 4 is never read -> empty target.
    # cy = 4, cx = 29.5 (64 x 64, S = 40): rows cell(3.9) = cell(4) = cell(4.1) = 2 (2.44..2.56)
    # cols: cell(29.5) = 18 (18.44), cell(25.5) = 15 (15.94), cell(33.5) = 20 (20.94) -> 17..19.
    mask = _rect(64, 64, slice(4, 5), slice(10, 50))
    out = _build([mask], [[10, 4, 50, 5]], [9], (64, 64), num_classes=NUM_CLASSES)
    _assert_level(out[0], 40, [97, 98, 99], [0, 0, 0], [9])
    assert not out[0].masks[0].any()


def test_t1_min_mask_pixels_9_vs_10():
    size = (64, 64)
    nine = _rect(*size, slice(10, 13), slice(10, 13))  # 3 x 3 = 9 px
    ten = _rect(*size, slice(40, 42), slice(40, 45))  # 2 x 5 = 10 px
    out = _build([nine], [[10, 10, 13, 13]], [1], size, num_classes=NUM_CLASSES)
    assert all(len(lv.pos) == 0 and (lv.cate == NUM_CLASSES).all() for lv in out)
    out = _build([nine, ten], [[10, 10, 13, 13], [40, 40, 45, 42]], [1, 2], size,
                 num_classes=NUM_CLASSES)
    assert len(out[0].pos) > 0 and (out[0].gt == 1).all()
    assert (out[0].cate.flatten()[out[0].pos] == 2).all()
    # the threshold is a parameter
    out = _build([nine], [[10, 10, 13, 13]], [1], size, num_classes=NUM_CLASSES,
                 min_mask_pixels=9)
    assert len(out[0].pos) > 0


def test_t7_empty_gt_all_background():
    size = (64, 96)
    out = _build([], [], [], size)  # num_classes = 80 by default
    assert len(out) == 5
    for level, num_grid, stride in zip(out, (40, 36, 24, 16, 12), DEFAULT_OUTPUT_STRIDES):
        assert level.cate.shape == (num_grid, num_grid)
        assert (level.cate == 80).all()
        assert level.pos.shape == (0,) and level.gt.shape == (0,)
        assert level.pos.dtype == torch.int64 and level.gt.dtype == torch.int64
        assert level.masks.shape == (0, 64 // stride, 96 // stride)
        assert level.masks.dtype == torch.bool


def test_output_dtypes_devices_and_uint8_input():
    masks = [BIG[0], SMALL[0]]
    boxes = [BIG[1], SMALL[1]]
    out = _build(masks, boxes, [5, 2], (64, 64), **ONE_LEVEL)
    out_u8 = build_solo_targets(
        torch.tensor(boxes, dtype=torch.float64), torch.tensor([5, 2], dtype=torch.int32),
        torch.stack(masks).to(torch.uint8), (64, 64), **ONE_LEVEL)
    for level, level_u8 in zip(out, out_u8):
        for name in ("cate", "pos", "gt"):
            tensor = getattr(level, name)
            assert tensor.dtype == torch.int64, name
            assert tensor.device.type == "cpu"
            assert torch.equal(tensor, getattr(level_u8, name))
        assert level.masks.dtype == torch.bool and level_u8.masks.dtype == torch.bool
        assert torch.equal(level.masks, level_u8.masks)
        assert level.masks.shape == (2, 16, 16)


@pytest.mark.parametrize("stride", [2, 4, 8, 16])
def test_t6_downsample_masks_equals_interpolate(stride):
    gen = torch.Generator().manual_seed(stride)
    for density in (0.1, 0.5, 0.9):
        masks = torch.rand(4, 64, 96, generator=gen) < density
        expected = F.interpolate(masks[:, None].float(), scale_factor=1 / stride,
                                 mode="bilinear", align_corners=False)[:, 0] >= 0.5
        got = downsample_masks(masks, stride)
        assert got.dtype == torch.bool
        assert got.shape == (4, 64 // stride, 96 // stride)
        assert torch.equal(got, expected)


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 8])
def test_t6_soft_mask_targets_against_bilinear_values_and_block_fractions(stride):
    """MODEL.SOLO.MASK_TARGET: "half_ties" is the T6 target with 0.5 wherever the bilinear value
    is exactly 0.5 (only at even strides); "area" is the mean of each stride x stride block."""
    gen = torch.Generator().manual_seed(10 * stride)
    masks = torch.rand(3, 48, 96, generator=gen) < 0.5
    bilinear = F.interpolate(masks[:, None].float(), scale_factor=1 / stride,
                             mode="bilinear", align_corners=False)[:, 0]
    ties = bilinear == 0.5
    half = downsample_masks(masks, stride, "half_ties")
    assert half.dtype == torch.float32
    assert torch.equal(half[~ties], (bilinear[~ties] > 0.5).float())
    assert (half[ties] == 0.5).all() and ties.any() == (stride % 2 == 0)
    area = downsample_masks(masks, stride, "area")
    assert area.dtype == torch.float32 and area.shape == (3, 48 // stride, 96 // stride)
    assert torch.allclose(area, F.avg_pool2d(masks[:, None].float(), stride)[:, 0])
    with pytest.raises(ValueError, match="unknown mask target mode 'soft'"):
        downsample_masks(masks, stride, "soft")


def test_t6_soft_mask_targets_draw_straight_edges_where_they_are():
    """A band of rows 3..12 has both edges inside stride-2 pixels (rows 2-3 and 12-13). Drawn
    back as inference does (bilinear x2, >= 0.5), the T6 target is a row too large at each
    edge; the soft targets give the band itself."""
    band = _rect(32, 32, slice(3, 13), slice(0, 32))[None]

    def drawn(mode):
        target = downsample_masks(band, 2, mode).float()
        return F.interpolate(target[:, None], scale_factor=2, mode="bilinear",
                             align_corners=False)[:, 0] >= 0.5

    assert torch.equal(drawn("binary"), _rect(32, 32, slice(2, 14), slice(0, 32))[None])
    assert torch.equal(drawn("half_ties"), band)
    assert torch.equal(drawn("area"), band)


def test_t6_mask_target_reaches_every_level_of_the_targets():
    size = (64, 96)
    mask = _rect(*size, slice(41, 60), slice(61, 90))
    out = _build([mask], [[61, 41, 90, 60]], [3], size, num_classes=NUM_CLASSES,
                 mask_target="half_ties")
    for level, stride in zip(out, DEFAULT_OUTPUT_STRIDES):
        assert torch.equal(level.masks, downsample_masks(mask[None], stride, "half_ties"))
    assert (out[0].masks == 0.5).any()


# ----------------------------------------------------------------------------------------------
# Randomized comparison with a per-object loop re-implementation of the original algorithm
# (dense S^2 x h x w targets, rules T1-T6 of DESIGN.md).
# ----------------------------------------------------------------------------------------------
def _reference_level(boxes, classes, masks, image_size, num_grid, scale_range, output_stride,
                     sigma, num_classes, min_pixels):
    f32 = np.float32
    height, width = image_size
    h, w = height // output_stride, width // output_stride
    cate = np.full((num_grid, num_grid), num_classes, dtype=np.int64)
    ins = np.zeros((num_grid * num_grid, h, w), dtype=bool)
    ind = np.zeros(num_grid * num_grid, dtype=bool)
    pairs = []  # SOLOv2: (gt, cell) in processing order
    for n in range(len(classes)):
        x1, y1, x2, y2 = (f32(v) for v in boxes[n])
        if not scale_range[0] <= np.sqrt((x2 - x1) * (y2 - y1)) <= scale_range[1]:
            continue
        mask = masks[n]
        if mask.sum() < min_pixels:
            continue
        ys, xs = np.nonzero(mask)
        cy, cx = f32(ys.sum() / len(ys)), f32(xs.sum() / len(xs))
        half_w = f32(0.5) * (x2 - x1) * f32(sigma)
        half_h = f32(0.5) * (y2 - y1) * f32(sigma)
        ci, cj = _np_cell(cy, height, num_grid), _np_cell(cx, width, num_grid)
        top = max(0, _np_cell(cy - half_h, height, num_grid), ci - 1)
        down = min(num_grid - 1, _np_cell(cy + half_h, height, num_grid), ci + 1)
        left = max(0, _np_cell(cx - half_w, width, num_grid), cj - 1)
        right = min(num_grid - 1, _np_cell(cx + half_w, width, num_grid), cj + 1)
        small = F.interpolate(torch.from_numpy(mask)[None, None].float(),
                              scale_factor=1.0 / output_stride, mode="bilinear",
                              align_corners=False)[0, 0].numpy() >= 0.5
        for i in range(top, down + 1):
            for j in range(left, right + 1):
                cate[i, j] = classes[n]
                ins[i * num_grid + j] = small
                ind[i * num_grid + j] = True
                pairs.append((n, i * num_grid + j))
    return cate, ins, ind, pairs


def _random_instances(seed, valid=(128, 96), padded=(128, 128), num=5):
    rng = np.random.RandomState(seed)
    masks, boxes = [], []
    yy, xx = np.mgrid[0:padded[0], 0:padded[1]]
    while len(masks) < num:
        cy, cx = rng.uniform(0, valid[0]), rng.uniform(0, valid[1])
        ry, rx = rng.uniform(1.0, 45.0), rng.uniform(1.0, 45.0)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        if rng.rand() < 0.5:  # make some shapes asymmetric
            mask &= (yy + rng.uniform(-20, 20)) >= (xx - cx) + cy
        mask[valid[0]:, :] = False
        mask[:, valid[1]:] = False
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        masks.append(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    # one tiny object at a random position in the list: 9 pixels (no target, rule 1) for odd
    # seeds, 10 pixels (a target) for even seeds
    y0, x0 = rng.randint(0, valid[0] - 5), rng.randint(0, valid[1] - 5)
    height, width = (3, 3) if seed % 2 else (2, 5)
    tiny = np.zeros(padded, dtype=bool)
    tiny[y0:y0 + height, x0:x0 + width] = True
    position = rng.randint(0, num + 1)
    masks.insert(position, tiny)
    boxes.insert(position, [x0, y0, x0 + width, y0 + height])
    classes = rng.randint(0, NUM_CLASSES, size=num + 1)
    return np.stack(masks), np.array(boxes, dtype=np.float32), classes


def _small(mask, cfg, index):
    stride = cfg["strides"][index] // 2
    return F.interpolate(torch.from_numpy(mask)[None, None].float(), scale_factor=1.0 / stride,
                         mode="bilinear", align_corners=False)[0, 0].numpy() >= 0.5


RANDOM_CONFIG = dict(
    num_grids=(12, 10, 8, 6),
    scale_ranges=((1, 24), (12, 48), (24, 96), (48, 192)),
    strides=(8, 8, 16, 32),
    sigma=0.2,
    num_classes=NUM_CLASSES,
    min_mask_pixels=10,
)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_t1_to_t6_randomized_against_per_object_reference(seed):
    masks, boxes, classes = _random_instances(seed)
    padded = masks.shape[1:]
    args = (torch.from_numpy(boxes), torch.from_numpy(classes).long(), torch.from_numpy(masks),
            padded)
    out = build_solo_targets(*args, **RANDOM_CONFIG)
    out_v2 = build_solo_targets(*args, one_sample_per_cell=False, **RANDOM_CONFIG)
    cfg = RANDOM_CONFIG
    num_positive = 0
    for index, (level, level_v2) in enumerate(zip(out, out_v2)):
        cate, ins, ind, pairs = _reference_level(
            boxes, classes, masks, padded, cfg["num_grids"][index], cfg["scale_ranges"][index],
            cfg["strides"][index] // 2, cfg["sigma"], NUM_CLASSES, cfg["min_mask_pixels"])
        assert torch.equal(level.cate, torch.from_numpy(cate)), index
        assert level.pos.tolist() == np.nonzero(ind)[0].tolist(), index
        for cell, gt in zip(level.pos.tolist(), level.gt.tolist()):
            assert np.array_equal(level.masks[gt].numpy(), ins[cell]), (index, cell)
        num_positive += len(level.pos)
        # SOLOv2 pairs
        assert list(zip(level_v2.gt.tolist(), level_v2.pos.tolist())) == pairs, index
        assert torch.equal(level_v2.cate, torch.from_numpy(cate)), index
        for cell, gt in zip(level_v2.pos.tolist(), level_v2.gt.tolist()):
            assert np.array_equal(level_v2.masks[gt].numpy(), _small(masks[gt], cfg, index))
    assert num_positive > 0
