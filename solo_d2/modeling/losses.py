"""SOLO losses (DESIGN.md rules L1-L3): Dice on positive masks, sigmoid focal loss on categories."""

from typing import List

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss

__all__ = ["dice_loss", "mask_loss", "category_focal_loss"]


def dice_loss(probs: torch.Tensor, targets: torch.Tensor, eps: float = 0.001) -> torch.Tensor:
    """Per-sample Dice loss ``1 - 2 sum(p t) / ((sum(p^2) + eps) + (sum(t^2) + eps))``.

    Computed in float32 whatever the input dtype or autocast state: the sums over a mask can
    exceed the float16 range (65504). The sums are batched dot products and the gradient is
    written out (:class:`_DiceLoss`), so a mask is read a few times instead of the ~10 passes
    of an autograd graph of element-wise ops: the Dice of a few hundred H/2 masks is a large
    part of a CPU step.

    Args:
        probs: Float[P, h, w] mask probabilities (any float dtype).
        targets: Bool/Float[P, h, w] targets in [0, 1] (binary or soft, MASK_TARGET).
    Returns:
        Float32[P].
    """
    with torch.autocast(probs.device.type, enabled=False):
        return _DiceLoss.apply(probs.flatten(1), targets.flatten(1).to(torch.float32), eps)


class _DiceLoss(torch.autograd.Function):
    """Dice of Float[P, N] probabilities against Float32[P, N] targets, and its gradient
    ``d/dp = -2 (t D - 2 I p) / D^2`` with ``I = sum(p t)``, ``D = sum(p^2) + sum(t^2) + 2 eps``.
    """

    @staticmethod
    def forward(ctx, probs, targets, eps):
        p = probs.to(torch.float32)
        intersection = torch.einsum("pn,pn->p", p, targets)
        denominator = torch.einsum("pn,pn->p", p, p) + torch.einsum("pn,pn->p", targets, targets)
        denominator = denominator + 2 * eps
        ctx.save_for_backward(p, targets, intersection, denominator)
        ctx.input_dtype = probs.dtype
        return 1.0 - 2.0 * intersection / denominator

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        p, targets, intersection, denominator = ctx.saved_tensors
        grad_targets = grad * -2.0 / denominator  # coefficient of t
        grad_probs = p * (grad * 4.0 * intersection / denominator.square())[:, None]
        grad_probs.addcmul_(targets, grad_targets[:, None])
        return grad_probs.to(ctx.input_dtype), None, None


def mask_loss(
    per_level_probs: List[torch.Tensor], per_level_targets: List[torch.Tensor]
) -> torch.Tensor:
    """Mean Dice over all positive samples of all levels (unweighted).

    Args:
        per_level_probs / per_level_targets: per level Float[P_l, h_l, w_l] / Bool or Float
            [P_l, h_l, w_l].
    With no positive sample the result is a zero that stays connected to the graph of the
    (possibly empty) predictions, so every parameter still gets a (zero) gradient.
    """
    losses = torch.cat([dice_loss(p, t) for p, t in zip(per_level_probs, per_level_targets)])
    return losses.sum() / max(losses.numel(), 1)


def category_focal_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float, gamma: float
) -> torch.Tensor:
    """Sigmoid focal loss summed over cells and classes, divided by (#positive cells + 1).

    The count of positive cells is the process's own (per GPU), as in the original
    implementation. Computed in float32 whatever the input dtype or autocast state.

    Args:
        logits: Float[M, C] category logits of all cells of all levels and images.
        labels: Long[M] class per cell, background = ``num_classes``.
    Returns:
        Float32 scalar.
    """
    with torch.autocast(logits.device.type, enabled=False):
        logits = logits.float()
        targets = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(logits.dtype)
        num_pos = (labels != num_classes).sum()
        loss = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="sum")
        return loss / (num_pos + 1)
