"""Mixed-precision training steps: float16 on CUDA (Detectron2's ``AMPTrainer``, with gradient
scaling) or bfloat16 on the CPU or CUDA (autocast only: bfloat16 has float32's exponent range,
so its gradients need no scaling).

``SOLVER.AMP.ENABLED`` turns mixed precision on, ``SOLVER.AMP.PRECISION`` picks the type. On the
CPU, bfloat16 convolutions run on oneDNN's native kernels (AVX512-BF16 / AMX); a CPU without
them would emulate bfloat16 more slowly than float32, so training stays in float32 there, with a
warning (:func:`cpu_has_native_bfloat16`). The model's parameters, the optimizer and the losses
(:mod:`solo_d2.modeling.losses`) stay in float32; only the autocast ops (convolutions, matrix
products) run in the low precision.
"""

import logging
import time

import torch

from detectron2.engine import AMPTrainer, SimpleTrainer

__all__ = [
    "PRECISIONS",
    "AutocastTrainer",
    "amp_dtype",
    "build_step_trainer",
    "cpu_has_native_bfloat16",
    "uses_gradient_scaling",
]

logger = logging.getLogger(__name__)

#: ``SOLVER.AMP.PRECISION`` values.
PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX) that oneDNN uses."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def uses_gradient_scaling(cfg) -> bool:
    """Whether training steps go through a ``GradScaler`` (float16 mixed precision)."""
    return bool(cfg.SOLVER.AMP.ENABLED) and cfg.SOLVER.AMP.PRECISION == "float16"


def amp_dtype(cfg):
    """The autocast dtype of a training run, or None for float32.

    None when ``SOLVER.AMP.ENABLED`` is off, and for bfloat16 on a CPU without native bfloat16
    (logged). Raises for an unknown ``SOLVER.AMP.PRECISION`` and for float16 on the CPU.
    """
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    precision = cfg.SOLVER.AMP.PRECISION
    if precision not in PRECISIONS:
        raise ValueError(
            f"SOLVER.AMP.PRECISION must be one of {sorted(PRECISIONS)}, got {precision!r}"
        )
    on_cuda = cfg.MODEL.DEVICE.startswith("cuda")
    if precision == "float16" and not on_cuda:
        raise ValueError(
            f"SOLVER.AMP.PRECISION float16 needs CUDA (Detectron2's AMPTrainer), but MODEL.DEVICE "
            f"is {cfg.MODEL.DEVICE!r}: use SOLVER.AMP.PRECISION bfloat16 on the CPU, or "
            "SOLVER.AMP.ENABLED False"
        )
    if precision == "bfloat16" and not on_cuda and not cpu_has_native_bfloat16():
        logger.warning(
            "SOLVER.AMP.PRECISION bfloat16: this CPU has no bfloat16 instructions (AVX512-BF16 "
            "or AMX), where bfloat16 is slower than float32: training in float32"
        )
        return None
    return PRECISIONS[precision]


class AutocastTrainer(SimpleTrainer):
    """Detectron2's ``SimpleTrainer`` with the forward pass under ``torch.autocast(device,
    dtype)`` and no gradient scaling (meant for bfloat16). Backward and the optimizer step run
    outside autocast, as PyTorch recommends."""

    def __init__(self, model, data_loader, optimizer, device_type: str, dtype: torch.dtype):
        super().__init__(model, data_loader, optimizer)
        self.device_type = device_type
        self.dtype = dtype

    def run_step(self):  # SimpleTrainer.run_step with the forward under autocast
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            losses, loss_dict = loss_dict, {"total_loss": loss_dict}
        else:
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def build_step_trainer(cfg, model, data_loader, optimizer) -> SimpleTrainer:
    """The per-iteration trainer of ``cfg``: ``SimpleTrainer`` (float32), Detectron2's
    ``AMPTrainer`` (CUDA float16) or :class:`AutocastTrainer` (bfloat16)."""
    dtype = amp_dtype(cfg)
    if dtype is None:
        return SimpleTrainer(model, data_loader, optimizer)
    if dtype == torch.float16:
        return AMPTrainer(model, data_loader, optimizer)
    device_type = torch.device(cfg.MODEL.DEVICE).type
    logger.info("Mixed precision: the forward pass runs under %s autocast", dtype)
    return AutocastTrainer(model, data_loader, optimizer, device_type, dtype)
