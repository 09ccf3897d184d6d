"""points-NMS and Matrix NMS (solo_d2.modeling.postprocess): DESIGN.md rules I1, M1 and M2.

Expected values are hand-computed (see the comments).
"""
import math

import pytest
import torch

from solo_d2.modeling.postprocess import matrix_nms, points_nms

KERNELS = ["gaussian", "linear"]


# ----------------------------------------------------------------------------------------------
# 4.1 points-NMS: keep a cell iff it equals max(itself, top, left, top-left).
# ----------------------------------------------------------------------------------------------
def test_i1_points_nms_hand_grid():
    heat = torch.tensor([[0.5, 0.2, 0.3],
                         [0.1, 0.6, 0.6],
                         [0.4, 0.2, 0.7]])
    # (0,0) no neighbours -> kept (even though (1,1) = 0.6 is larger: only top/left compared)
    # (0,1) 0.2 < left 0.5 -> 0          (0,2) 0.3 >= left 0.2 -> kept
    # (1,0) 0.1 < top 0.5 -> 0           (1,1) 0.6 >= 0.2, 0.1, 0.5 -> kept
    # (1,2) 0.6 == left 0.6 (tie), >= top 0.3, top-left 0.2 -> kept
    # (2,0) 0.4 >= top 0.1 -> kept       (2,1) 0.2 < top 0.6 -> 0
    # (2,2) 0.7 >= 0.6, 0.2, 0.6 -> kept
    expected = torch.tensor([[0.5, 0.0, 0.3],
                             [0.0, 0.6, 0.6],
                             [0.4, 0.0, 0.7]])
    # channel 1: a ramp increasing right and down -> every cell is its window's max;
    # batch 1: the transpose of channel 0 (checks that rows/cols are not swapped).
    ramp = torch.tensor([[0.1, 0.2, 0.3],
                         [0.2, 0.3, 0.4],
                         [0.3, 0.4, 0.5]])
    # transpose of heat: [[.5,.1,.4],[.2,.6,.2],[.3,.6,.7]]
    # (0,1) .1 < .5 -> 0; (0,2) .4 >= .1 -> kept; (1,0) .2 < .5 -> 0; (1,1) kept;
    # (1,2) .2 < top .4 -> 0; (2,0) .3 >= .2 -> kept; (2,1) .6 == top .6 (tie) -> kept; (2,2) kept
    expected_t = torch.tensor([[0.5, 0.0, 0.4],
                               [0.0, 0.6, 0.0],
                               [0.3, 0.6, 0.7]])
    batch = torch.stack([torch.stack([heat, ramp]), torch.stack([heat.t(), ramp])])
    out = points_nms(batch)
    assert out.shape == (2, 2, 3, 3)
    assert torch.equal(out[0, 0], expected)
    assert torch.equal(out[0, 1], ramp)
    assert torch.equal(out[1, 0], expected_t)
    assert torch.equal(out[1, 1], ramp)


def test_i1_points_nms_constant_grid_all_ties_kept():
    heat = torch.full((1, 1, 4, 4), 0.3)
    assert torch.equal(points_nms(heat), heat)


# ----------------------------------------------------------------------------------------------
# 5. Matrix NMS
# ----------------------------------------------------------------------------------------------
def _strip_masks(*ranges, width=10):
    """Bool[N, 1, width] masks with pixels [a, b) set."""
    masks = torch.zeros(len(ranges), 1, width, dtype=torch.bool)
    for index, (start, stop) in enumerate(ranges):
        masks[index, 0, start:stop] = True
    return masks


# M0 = px 0..3 (area 4), M1 = px 3..8 (area 6), M2 = px 4..8 (area 5)
# iou01 = 1 / (4 + 6 - 1) = 1/9, iou02 = 0, iou12 = 5 / (6 + 5 - 5) = 5/6.
# comp0 = 0, comp1 = 1/9, comp2 = max(0, 5/6) (not used: nothing after M2).
HAND_MASKS = _strip_masks((0, 4), (3, 9), (4, 9))
HAND_SCORES = torch.tensor([0.9, 0.8, 0.7])


def test_m1_matrix_nms_gaussian_hand_case():
    # decay1 = f(1/9) / f(0) = exp(-2/81)
    # decay2 = min(f(0) / f(0), f(5/6) / f(1/9)) = exp(-2 * 25/36 + 2/81)
    labels = torch.tensor([1, 1, 1])
    out = matrix_nms(HAND_MASKS, labels, HAND_SCORES, kernel="gaussian", sigma=2.0)
    expected = [0.9, 0.8 * math.exp(-2 / 81), 0.7 * math.exp(-50 / 36 + 2 / 81)]
    assert out.shape == (3,)
    for got, want in zip(out.tolist(), expected):
        assert math.isclose(got, want, rel_tol=1e-5)


def test_m1_matrix_nms_gaussian_sigma_multiplies():
    # sigma = 0.5: decay1 = exp(-0.5/81), decay2 = exp(-0.5 * 25/36 + 0.5/81)
    labels = torch.tensor([1, 1, 1])
    out = matrix_nms(HAND_MASKS, labels, HAND_SCORES, kernel="gaussian", sigma=0.5)
    expected = [0.9, 0.8 * math.exp(-0.5 / 81), 0.7 * math.exp(-12.5 / 36 + 0.5 / 81)]
    for got, want in zip(out.tolist(), expected):
        assert math.isclose(got, want, rel_tol=1e-5)


def test_m1_matrix_nms_linear_hand_case():
    # decay1 = (1 - 1/9) / (1 - 0) = 8/9
    # decay2 = min((1 - 0) / 1, (1 - 5/6) / (1 - 1/9)) = (1/6) / (8/9) = 3/16
    labels = torch.tensor([1, 1, 1])
    out = matrix_nms(HAND_MASKS, labels, HAND_SCORES, kernel="linear")
    expected = [0.9, 0.8 * 8 / 9, 0.7 * 3 / 16]
    for got, want in zip(out.tolist(), expected):
        assert math.isclose(got, want, rel_tol=1e-5)


def test_m1_matrix_nms_mask_areas_argument():
    labels = torch.tensor([1, 1, 1])
    areas = torch.tensor([4.0, 6.0, 5.0])
    out = matrix_nms(HAND_MASKS, labels, HAND_SCORES, kernel="linear", mask_areas=areas)
    assert torch.allclose(out, torch.tensor([0.9, 0.8 * 8 / 9, 0.7 * 3 / 16]))


@pytest.mark.parametrize("kernel", KERNELS)
def test_m1_matrix_nms_different_labels_do_not_decay(kernel):
    # M2 gets another label: iou12 = 0 -> decay2 = min(1, f(0)/f(1/9)) = 1 (gaussian) and
    # min(1, 1/(8/9)) = 1 (linear); M1 still decays by M0.
    out = matrix_nms(HAND_MASKS, torch.tensor([1, 1, 2]), HAND_SCORES, kernel=kernel)
    decay1 = math.exp(-2 / 81) if kernel == "gaussian" else 8 / 9
    expected = [0.9, 0.8 * decay1, 0.7]
    for got, want in zip(out.tolist(), expected):
        assert math.isclose(got, want, rel_tol=1e-5)
    # identical masks with three different labels: nothing decays
    same = _strip_masks((2, 7), (2, 7), (2, 7))
    out = matrix_nms(same, torch.tensor([0, 1, 2]), HAND_SCORES, kernel=kernel)
    assert torch.allclose(out, HAND_SCORES)


@pytest.mark.parametrize("kernel", KERNELS)
def test_m2_matrix_nms_empty_input(kernel):
    out = matrix_nms(torch.zeros(0, 4, 4, dtype=torch.bool), torch.zeros(0, dtype=torch.int64),
                     torch.zeros(0), kernel=kernel)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (0,)


@pytest.mark.parametrize("kernel", KERNELS)
def test_m2_matrix_nms_duplicate_masks_no_nan(kernel):
    # three identical masks, same label: iou = 1 for every pair, comp1 = comp2 = 1.
    # gaussian: decay1 = f(1)/f(0) = e^-2, decay2 = min(f(1)/f(0), f(1)/f(1)) = e^-2
    # linear:   decay1 = 0/1 = 0, decay2 = min(0/1, 0/0) -> 0 (and never NaN)
    masks = _strip_masks((2, 7), (2, 7), (2, 7))
    out = matrix_nms(masks, torch.tensor([3, 3, 3]), HAND_SCORES, kernel=kernel)
    assert torch.isfinite(out).all()
    if kernel == "gaussian":
        expected = [0.9, 0.8 * math.exp(-2), 0.7 * math.exp(-2)]
    else:
        expected = [0.9, 0.0, 0.0]
    for got, want in zip(out.tolist(), expected):
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-7)


@pytest.mark.parametrize("kernel", KERNELS)
def test_m2_matrix_nms_all_empty_masks_no_nan(kernel):
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    out = matrix_nms(masks, torch.tensor([0, 0, 0]), HAND_SCORES, kernel=kernel)
    assert torch.isfinite(out).all()
    assert out[0].item() == pytest.approx(0.9)
    assert (out >= 0).all() and (out <= HAND_SCORES + 1e-6).all()
    # an empty mask among non-empty ones
    masks = _strip_masks((0, 0), (2, 7), (2, 7))
    out = matrix_nms(masks, torch.tensor([0, 0, 0]), HAND_SCORES, kernel=kernel)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kernel", KERNELS)
def test_m1_matrix_nms_first_score_never_decays(kernel):
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(8, 6, 6, generator=gen) < 0.5
    labels = torch.randint(0, 2, (8,), generator=gen)
    scores = torch.sort(torch.rand(8, generator=gen), descending=True).values
    out = matrix_nms(masks, labels, scores, kernel=kernel)
    assert out[0].item() == scores[0].item()
    assert torch.isfinite(out).all()
    assert (out <= scores + 1e-6).all() and (out >= 0).all()


def _matrix_nms_reference(masks, labels, scores, kernel, sigma=2.0):
    """Plain-loop rule M1."""
    flat = [set(torch.nonzero(m.flatten()).flatten().tolist()) for m in masks]
    num = len(flat)

    def iou(i, j):
        if i >= j or labels[i] != labels[j]:
            return 0.0
        inter = len(flat[i] & flat[j])
        return inter / (len(flat[i]) + len(flat[j]) - inter)

    comp = [max([iou(k, i) for k in range(i)], default=0.0) for i in range(num)]
    out = []
    for j in range(num):
        decay = 1.0
        for i in range(j):
            if kernel == "gaussian":
                ratio = math.exp(-sigma * iou(i, j) ** 2) / math.exp(-sigma * comp[i] ** 2)
            else:
                ratio = (1 - iou(i, j)) / (1 - comp[i])
            decay = min(decay, ratio)
        out.append(scores[j] * decay)
    return out


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_m1_matrix_nms_random_against_loop_reference(kernel, seed):
    gen = torch.Generator().manual_seed(seed)
    masks = torch.rand(10, 6, 7, generator=gen) < 0.5
    labels = torch.randint(0, 3, (10,), generator=gen)
    scores = torch.sort(torch.rand(10, generator=gen), descending=True).values
    out = matrix_nms(masks, labels, scores, kernel=kernel)
    expected = _matrix_nms_reference(masks, labels.tolist(), scores.tolist(), kernel)
    for got, want in zip(out.tolist(), expected):
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-7)


@pytest.mark.parametrize("factor, kept", [(1.0, 0), (0.5, 1), (0.0, 1)])
def test_i3_mask_area_bound_and_its_factor(factor, kept):
    """Rule I3: a 6-pixel mask (at H/4) of a stride-8 level is dropped by the original bound
    (more than 8 pixels needed), kept when MASK_AREA_FACTOR_TEST halves or removes it."""
    from solo_d2.modeling.postprocess import SOLOPostProcessor

    post = SOLOPostProcessor(num_grids=(4,), strides=(8,), mask_area_factor=factor)
    logits = torch.full((2, 4, 4), -10.0)
    logits[1, 2, 3] = 3.0  # one candidate: class 1 at cell 2 * 4 + 3
    probs = torch.zeros(16, 16, 16)
    probs[11, 4:6, 8:11] = 0.9  # its mask: 2 x 3 pixels at H/4

    def mask_probs(level, cells, size):
        return probs[cells]

    result = post([logits], mask_probs, (64, 64), (64, 64), (64, 64))
    assert len(result) == kept
    if kept:
        assert result.pred_classes.tolist() == [1] and result.pred_masks.sum() > 6


# ----------------------------------------------------------------------------------------------
# KEEP_PEAK_COMPONENT_TEST (solo_d2): the connected part of a mask around its peak.
# ----------------------------------------------------------------------------------------------
def test_peak_components_keep_the_part_with_the_peak_and_diagonal_neighbours():
    """Mask 0: a 2x2 block with the peak, a pixel touching it only diagonally (8-connected: kept)
    and a separate 3x3 block (dropped although larger). Mask 1: the peak in the small part keeps
    the small part. Mask 2: nothing above the threshold stays empty."""
    from solo_d2.modeling.postprocess import peak_components

    probs = torch.full((3, 8, 8), 0.2)
    probs[0, 0:2, 0:2] = 0.7
    probs[0, 0, 0] = 0.95  # the peak
    probs[0, 2, 2] = 0.6  # diagonal to (1, 1)
    probs[0, 5:8, 5:8] = 0.9
    probs[1] = probs[0]
    probs[1, 6, 6] = 0.99  # now the peak is in the 3x3 block
    probs[2] = 0.4
    parts = peak_components(probs, 0.5)
    expected0 = torch.zeros(8, 8, dtype=torch.bool)
    expected0[0:2, 0:2] = True
    expected0[2, 2] = True
    expected1 = torch.zeros(8, 8, dtype=torch.bool)
    expected1[5:8, 5:8] = True
    assert torch.equal(parts[0], expected0)
    assert torch.equal(parts[1], expected1)
    assert not parts[2].any()
    assert peak_components(torch.zeros(0, 8, 8), 0.5).shape == (0, 8, 8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_peak_components_equal_scipy_labels(seed):
    """Random blobs (a long snake-like part included): the result is scipy's 8-connected
    component that holds each mask's argmax."""
    from scipy import ndimage

    from solo_d2.modeling.postprocess import peak_components

    gen = torch.Generator().manual_seed(seed)
    probs = torch.rand(6, 24, 20, generator=gen)
    probs = torch.nn.functional.avg_pool2d(probs[:, None], 3, stride=1, padding=1)[:, 0]
    probs[0] = 0.0
    probs[0, 1, :] = 0.8  # a snake: the fill needs many passes
    probs[0, 1:23, 19] = 0.8
    probs[0, 22, 2:20] = 0.8
    probs[0, 22, 2] = 0.9
    parts = peak_components(probs, 0.5)
    for probs_i, part in zip(probs, parts):
        labels, _ = ndimage.label((probs_i > 0.5).numpy(), structure=((1, 1, 1),) * 3)
        peak = divmod(int(probs_i.argmax()), probs_i.shape[1])
        expected = labels == labels[peak] if labels[peak] else labels < 0
        assert torch.equal(part, torch.from_numpy(expected))
    assert parts[0].sum() == 20 + 21 + 17  # the snake whole (its corners counted once)


@pytest.mark.parametrize("keep_part", [False, True])
def test_keep_peak_component_drops_a_stray_part_and_shrinks_the_box(keep_part):
    """One candidate whose mask has its body and a stray 2x2 part far away: with
    KEEP_PEAK_COMPONENT_TEST the output mask is the body alone, its outline (pixels near the
    body) unchanged, and the box the body's; without, the stray part stretches the box."""
    from solo_d2.modeling.postprocess import SOLOPostProcessor

    logits = torch.full((1, 4, 4), -10.0)
    logits[0, 1, 1] = 3.0
    probs = torch.full((16, 16, 16), 0.1)
    probs[5, 2:6, 2:7] = 0.9  # the body, at H/4
    probs[5, 3, 3] = 0.97
    probs[5, 12:14, 12:14] = 0.8  # the stray part

    def mask_probs(level, cells, size):
        return probs[cells]

    post = SOLOPostProcessor(num_grids=(4,), strides=(8,), mask_area_factor=0.0)
    body_only = SOLOPostProcessor(num_grids=(4,), strides=(8,), mask_area_factor=0.0)
    post.keep_peak_component = keep_part
    result = post([logits], mask_probs, (64, 64), (64, 64), (64, 64))
    clean = probs.clone()
    clean[5, 12:14, 12:14] = 0.1
    sizes = ((64, 64), (64, 64), (64, 64))
    reference = body_only([logits], lambda level, cells, size: clean[cells], *sizes)
    assert len(result) == 1
    if keep_part:
        assert torch.equal(result.pred_masks, reference.pred_masks)
        assert torch.equal(result.pred_boxes.tensor, reference.pred_boxes.tensor)
    else:
        assert result.pred_masks[0, 48:56, 48:56].any()
        assert result.pred_boxes.tensor[0, 2] > 48


def test_keep_peak_component_refuses_export():
    """The flood fill has no graph form: tracing with the key on fails and names the key."""
    from solo_d2.modeling.postprocess import peak_components

    with pytest.raises(Exception, match="KEEP_PEAK_COMPONENT_TEST"):
        torch.jit.trace(lambda p: peak_components(p, 0.5), torch.rand(2, 8, 8))
