"""The training optimizer: Detectron2's parameter groups, SGD or AdamW, and gradient clipping,
with fused (one kernel per step) updates and batched per-parameter clipping.

Detectron2's own builder steps the optimizer one parameter at a time and clips each gradient
with its own ``clip_grad_norm_`` call: 46-47 ms of a ~290 ms CPU training step of the quick configs,
15 ms here (docs/BENCHMARKS.md, "Optimizer step"). The update rules are
the same: SGD with momentum / AdamW as in ``torch.optim``, and Detectron2's clipping semantics
(``CLIP_TYPE "norm"``: each parameter's gradient is clipped to ``CLIP_VALUE`` on its own).
"""

import inspect
from typing import Callable, List, Type

import torch

from detectron2.solver.build import get_default_optimizer_params

from .amp import uses_gradient_scaling

__all__ = [
    "build_optimizer",
    "clip_grad_norm_per_parameter_",
    "clip_grad_value_",
    "optimizer_hyperparameters",
    "optimizer_param_groups",
]

_OPTIMIZERS = {"SGD": torch.optim.SGD, "AdamW": torch.optim.AdamW}


def clip_grad_norm_per_parameter_(
    params: List[torch.nn.Parameter], max_norm: float, norm_type: float = 2.0
) -> None:
    """Scale each parameter's gradient so that its own ``norm_type`` norm is at most
    ``max_norm``: the same result as ``torch.nn.utils.clip_grad_norm_(p, max_norm, norm_type)``
    called for every ``p`` (Detectron2's ``CLIP_TYPE "norm"``), with one ``_foreach_norm`` and
    one ``_foreach_mul_`` per device instead of a few small ops per parameter."""
    by_device = {}
    for p in params:
        if p.grad is not None:
            by_device.setdefault(p.grad.device, []).append(p.grad)
    for grads in by_device.values():
        norms = torch.stack(torch._foreach_norm(grads, norm_type))
        scales = torch.clamp(max_norm / (norms.float() + 1e-6), max=1.0)
        torch._foreach_mul_(grads, list(scales.to(grads[0].dtype).unbind()))


def clip_grad_value_(params: List[torch.nn.Parameter], clip_value: float, norm_type=None) -> None:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` (``CLIP_TYPE "value"``)."""
    torch.nn.utils.clip_grad_value_(params, clip_value)


_CLIPPERS = {"norm": clip_grad_norm_per_parameter_, "value": clip_grad_value_}


def _with_gradient_clipping(
    optimizer_cls: Type[torch.optim.Optimizer], clip: Callable[[list], None]
) -> Type[torch.optim.Optimizer]:
    class WithGradientClip(optimizer_cls):
        def step(self, closure=None):
            clip([p for group in self.param_groups for p in group["params"]])
            return super().step(closure)

    WithGradientClip.__name__ = WithGradientClip.__qualname__ = (
        optimizer_cls.__name__ + "WithGradientClip"
    )
    return WithGradientClip


def _implementation(optimizer_cls, cfg, params) -> dict:
    """``fused=True`` where this torch has a fused kernel for the parameters' device, else
    ``foreach=True``. Not fused under float16 AMP: ``GradScaler`` hands fused optimizers
    still-scaled gradients (it unscales inside their step), which clipping must not see
    (bfloat16 needs no scaler)."""
    accepted = inspect.signature(optimizer_cls.__init__).parameters
    devices = {p.device.type for group in params for p in group["params"]}
    if "fused" in accepted and not uses_gradient_scaling(cfg) and devices <= {"cpu", "cuda"}:
        try:  # probe: older releases have the argument but no kernel for some devices
            probe = [torch.zeros(1, device=d, requires_grad=True) for d in sorted(devices)]
            optimizer_cls(probe, lr=0.0, fused=True)
            return {"fused": True}
        except (RuntimeError, ValueError):
            pass
    return {"foreach": True} if "foreach" in accepted else {}


def optimizer_param_groups(cfg, model: torch.nn.Module) -> list:
    """Detectron2's parameter groups of ``model`` (``BASE_LR``, ``WEIGHT_DECAY_NORM``,
    ``BIAS_LR_FACTOR``, ``WEIGHT_DECAY_BIAS``)."""
    return get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )


def optimizer_hyperparameters(cfg) -> dict:
    """Keyword arguments of ``SOLVER.OPTIMIZER``'s ``torch.optim`` class: lr, weight decay, and
    SGD's momentum and Nesterov flag."""
    kwargs = dict(lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    if cfg.SOLVER.OPTIMIZER == "SGD":
        kwargs.update(momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV)
    return kwargs


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` (``"SGD"`` or ``"AdamW"``) over Detectron2's parameter groups
    (``BASE_LR``, ``WEIGHT_DECAY``, ``WEIGHT_DECAY_NORM``, ``BIAS_LR_FACTOR``,
    ``WEIGHT_DECAY_BIAS``), with ``SOLVER.CLIP_GRADIENTS`` applied before every step."""
    name = cfg.SOLVER.OPTIMIZER
    if name not in _OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER must be one of {sorted(_OPTIMIZERS)}, got {name!r}")
    params = optimizer_param_groups(cfg, model)
    optimizer_cls = _OPTIMIZERS[name]
    kwargs = optimizer_hyperparameters(cfg)
    kwargs.update(_implementation(optimizer_cls, cfg, params))
    clipping = cfg.SOLVER.CLIP_GRADIENTS
    if clipping.ENABLED:
        if clipping.CLIP_TYPE not in _CLIPPERS:
            raise ValueError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be one of {sorted(_CLIPPERS)}, "
                f"got {clipping.CLIP_TYPE!r}"
            )
        clipper = _CLIPPERS[clipping.CLIP_TYPE]
        value, norm_type = clipping.CLIP_VALUE, clipping.NORM_TYPE
        optimizer_cls = _with_gradient_clipping(
            optimizer_cls, lambda ps: clipper(ps, value, norm_type)
        )
    return optimizer_cls(params, **kwargs)
