"""Tests for the SOLO losses (solo_d2.modeling.losses) against DESIGN.md rules L1-L3.

Expected values are hand-computed (comments) or re-computed with a plain per-element formula.
"""
import math

import pytest
import torch

from solo_d2.modeling.losses import category_focal_loss, dice_loss, mask_loss

EPS = 0.001


# ----------------------------------------------------------------------------------------------
# Section 3, mask loss: d = 1 - 2 sum(p t) / ((sum(p^2) + 0.001) + (sum(t^2) + 0.001)).
# ----------------------------------------------------------------------------------------------
def test_l1_dice_hand_case():
    # p = [[0.5, 1], [0, 0.5]], t = [[1, 1], [0, 0]]:
    # sum(p t) = 1.5, sum(p^2) = 0.25 + 1 + 0.25 = 1.5, sum(t^2) = 2
    # d = 1 - 3 / (1.501 + 2.001) = 0.143346659...
    probs = torch.tensor([[[0.5, 1.0], [0.0, 0.5]]])
    targets = torch.tensor([[[True, True], [False, False]]])
    loss = dice_loss(probs, targets)
    assert loss.shape == (1,)
    assert math.isclose(loss.item(), 1 - 3 / 3.502, rel_tol=1e-6)
    assert math.isclose(loss.item(), 0.14334665905197, rel_tol=1e-6)
    # float targets give the same
    assert torch.allclose(dice_loss(probs, targets.float()), loss)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_l1_dice_gradient_matches_the_formula_differentiated_by_autograd(dtype):
    """dice_loss writes its gradient out: it equals autograd's through the per-element formula
    (in float64), for an empty target, an empty prediction, and the input's dtype."""
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(5, 7, 6, generator=generator).to(dtype)
    probs[3] = 0  # empty prediction
    targets = torch.rand(5, 7, 6, generator=generator) > 0.6
    targets[4] = False  # empty target
    weights = torch.rand(5, generator=generator)

    probs.requires_grad_(True)
    loss = dice_loss(probs, targets)
    (loss * weights).sum().backward()
    assert loss.dtype == torch.float32 and probs.grad.dtype == dtype

    reference = probs.detach().double().requires_grad_(True)
    p, t = reference.flatten(1), targets.flatten(1).double()
    expected = 1 - 2 * (p * t).sum(1) / (((p**2).sum(1) + EPS) + ((t**2).sum(1) + EPS))
    (expected * weights.double()).sum().backward()
    tolerance = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(loss.double(), expected.detach(), **tolerance)
    torch.testing.assert_close(probs.grad.double(), reference.grad, **tolerance)


def test_l1_dice_per_sample_perfect_and_empty():
    perfect = torch.zeros(4, 4)
    perfect[1:3, 0:4] = 1.0  # 8 pixels
    probs = torch.stack([perfect, torch.zeros(4, 4), torch.zeros(4, 4), torch.full((4, 4), 0.5)])
    targets = torch.stack([perfect.bool(), perfect.bool(), torch.zeros(4, 4, dtype=torch.bool),
                           torch.zeros(4, 4, dtype=torch.bool)])
    loss = dice_loss(probs, targets)
    assert loss.shape == (4,)
    # perfect: 1 - 16 / (8.001 + 8.001) = 1.2498e-4 (~0)
    assert math.isclose(loss[0].item(), 1 - 16 / 16.002, abs_tol=1e-6)  # fp32 cancellation
    assert loss[0].item() < 1e-3
    # empty prediction, non-empty target: 1 - 0 / (0.001 + 8.001) = 1
    assert loss[1].item() == 1.0
    # empty target and empty prediction: 1 - 0 / 0.002 = 1 (finite, no NaN)
    assert loss[2].item() == 1.0
    # empty target, prediction 0.5 everywhere: 1 - 0 = 1
    assert loss[3].item() == 1.0


def test_l1_mask_loss_mean_over_all_samples_of_all_levels():
    # level 0 (4 x 4): a) p == t (4 px): 1 - 8/8.002;  b) p = 0.5 everywhere, t 4 px:
    #   sum(p t) = 2, sum(p^2) = 16 * 0.25 = 4 -> 1 - 4/(4.001 + 4.001) = 1 - 4/8.002
    # level 1 (2 x 2): c) p = 0, t 1 px -> 1.
    # One mean over the 3 samples (not a mean of per-level means).
    target0 = torch.zeros(2, 4, 4, dtype=torch.bool)
    target0[:, 0:2, 0:2] = True
    probs0 = torch.stack([target0[0].float(), torch.full((4, 4), 0.5)])
    target1 = torch.zeros(1, 2, 2, dtype=torch.bool)
    target1[0, 1, 1] = True
    probs1 = torch.zeros(1, 2, 2)
    loss = mask_loss([probs0, probs1], [target0, target1])
    d_a, d_b, d_c = 1 - 8 / 8.002, 1 - 4 / 8.002, 1.0
    assert loss.dim() == 0
    assert math.isclose(loss.item(), (d_a + d_b + d_c) / 3, rel_tol=1e-6)
    assert not math.isclose(loss.item(), ((d_a + d_b) / 2 + d_c) / 2, rel_tol=1e-3)


def test_l1_mask_loss_skips_empty_levels():
    target = torch.ones(1, 2, 2, dtype=torch.bool)
    probs = torch.zeros(1, 2, 2)  # dice = 1
    empty_probs = torch.zeros(0, 4, 4)
    empty_targets = torch.zeros(0, 4, 4, dtype=torch.bool)
    loss = mask_loss([empty_probs, probs], [empty_targets, target])
    assert loss.item() == 1.0


def test_l3_mask_loss_no_samples_is_zero_and_keeps_graph():
    weight = torch.ones((), requires_grad=True)
    logits0 = torch.zeros(0, 8, 8) * weight
    logits1 = torch.zeros(0, 4, 4) * weight
    probs = [logits0.sigmoid(), logits1.sigmoid()]
    targets = [torch.zeros(0, 8, 8, dtype=torch.bool), torch.zeros(0, 4, 4, dtype=torch.bool)]
    loss = mask_loss(probs, targets)
    assert loss.dim() == 0
    assert math.isfinite(loss.item()) and loss.item() == 0.0
    assert loss.requires_grad
    (3.0 * loss).backward()
    assert weight.grad is not None and weight.grad.item() == 0.0

    leaf = torch.zeros(0, 4, 4, requires_grad=True)
    loss = mask_loss([leaf], [torch.zeros(0, 4, 4, dtype=torch.bool)])
    loss.backward()
    assert leaf.grad is not None and leaf.grad.shape == (0, 4, 4)


def test_l1_mask_loss_gradient_is_finite():
    logits = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    targets = torch.zeros(3, 4, 4, dtype=torch.bool)
    targets[0, :2] = True
    loss = mask_loss([logits.sigmoid()], [targets])
    loss.backward()
    assert torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------------------------
# Section 3, category loss: sigmoid focal (alpha 0.25, gamma 2), sum / (num_pos + 1).
# ----------------------------------------------------------------------------------------------
def _focal_reference(logits, labels, num_classes, alpha=0.25, gamma=2.0):
    total, num_pos = 0.0, 0
    for row, label in zip(logits.tolist(), labels.tolist()):
        num_pos += label != num_classes
        for cls, logit in enumerate(row):
            p = 1.0 / (1.0 + math.exp(-logit))
            if cls == label:
                total += -alpha * (1 - p) ** gamma * math.log(p)
            else:
                total += -(1 - alpha) * p ** gamma * math.log(1 - p)
    return total / (num_pos + 1)


def test_l2_focal_loss_hand_case():
    # 2 cells, 2 classes (background label 2). logits: cell 0 = (0, 0) -> p = (0.5, 0.5);
    # cell 1 = (ln 3, -ln 3) -> p = (0.75, 0.25).
    # cell 0, label 0: class 0 positive: 0.25 * 0.5^2 * ln 2 = 0.0625 ln 2
    #                  class 1 negative: 0.75 * 0.5^2 * ln 2 = 0.1875 ln 2
    # cell 1, background: class 0: 0.75 * 0.75^2 * -ln(0.25) = 0.421875 ln 4
    #                     class 1: 0.75 * 0.25^2 * -ln(0.75) = 0.046875 ln(4/3)
    # one positive -> divide by 2.
    ln3 = math.log(3.0)
    logits = torch.tensor([[0.0, 0.0], [ln3, -ln3]])
    labels = torch.tensor([0, 2])
    loss = category_focal_loss(logits, labels, num_classes=2, alpha=0.25, gamma=2.0)
    expected = (0.25 * math.log(2) + 0.421875 * math.log(4) + 0.046875 * math.log(4 / 3)) / 2
    assert loss.dim() == 0
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_l2_focal_loss_background_only():
    # same logits, both cells background: 2 * 0.1875 ln 2 + cell 1 as above, divided by 0 + 1.
    ln3 = math.log(3.0)
    logits = torch.tensor([[0.0, 0.0], [ln3, -ln3]])
    labels = torch.tensor([2, 2])
    loss = category_focal_loss(logits, labels, num_classes=2, alpha=0.25, gamma=2.0)
    expected = 0.375 * math.log(2) + 0.421875 * math.log(4) + 0.046875 * math.log(4 / 3)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_l2_focal_loss_random_against_plain_formula():
    gen = torch.Generator().manual_seed(0)
    num_classes = 3
    logits = torch.randn(12, num_classes, generator=gen) * 3
    labels = torch.randint(0, num_classes + 1, (12,), generator=gen)
    labels[:3] = torch.tensor([0, 2, num_classes])  # at least one positive and one background
    logits.requires_grad_(True)
    loss = category_focal_loss(logits, labels, num_classes, alpha=0.25, gamma=2.0)
    expected = _focal_reference(logits.detach(), labels, num_classes)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_l1_l2_losses_are_float32_under_autocast(dtype):
    """Mixed precision: the Dice sums of a large mask overflow float16 (65504); the losses are
    computed in float32 whatever the autocast state and input dtype."""
    probs = torch.ones(2, 300, 300, dtype=dtype)
    targets = torch.ones(2, 300, 300, dtype=torch.bool)
    logits = torch.randn(50, 4).to(dtype)
    labels = torch.randint(0, 5, (50,))
    with torch.autocast("cpu", dtype=dtype):
        dice = dice_loss(probs, targets)
        focal = category_focal_loss(logits, labels, 4, 0.25, 2.0)
    assert dice.dtype == torch.float32 and focal.dtype == torch.float32
    assert torch.allclose(dice, torch.zeros(2), atol=1e-6)  # perfect masks, no inf / NaN
    expected = category_focal_loss(logits.float(), labels, 4, 0.25, 2.0)
    assert torch.allclose(focal, expected)
