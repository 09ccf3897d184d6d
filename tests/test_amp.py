"""Mixed-precision training (solo_d2.engine.amp): bfloat16 autocast on the CPU and CUDA,
Detectron2's float16 AMPTrainer on CUDA, float32 elsewhere."""

import logging

import pytest
import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import make_input, tiny_cfg
from solo_d2.engine import amp
from solo_d2.engine.optim import build_optimizer


def amp_cfg(precision, enabled=True, device="cpu"):
    cfg = tiny_cfg()
    cfg.MODEL.DEVICE = device
    cfg.SOLVER.AMP.ENABLED = enabled
    cfg.SOLVER.AMP.PRECISION = precision
    return cfg


def test_the_autocast_type_follows_the_config_and_the_device(monkeypatch):
    monkeypatch.setattr(amp, "cpu_has_native_bfloat16", lambda: True)
    assert amp.amp_dtype(amp_cfg("bfloat16", enabled=False)) is None
    assert amp.amp_dtype(amp_cfg("bfloat16")) == torch.bfloat16
    with pytest.raises(ValueError, match="float16 needs CUDA.*bfloat16 on the CPU"):
        amp.amp_dtype(amp_cfg("float16"))
    with pytest.raises(ValueError, match="PRECISION must be one of.*got 'int8'"):
        amp.amp_dtype(amp_cfg("int8"))
    cuda = amp_cfg("float16", device="cuda")
    assert amp.amp_dtype(cuda) == torch.float16 and amp.uses_gradient_scaling(cuda)
    assert not amp.uses_gradient_scaling(amp_cfg("bfloat16", device="cuda"))


def test_bfloat16_on_a_cpu_without_bfloat16_instructions_trains_in_float32(monkeypatch, caplog):
    monkeypatch.setattr(amp, "cpu_has_native_bfloat16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="solo_d2.engine.amp"):
        assert amp.amp_dtype(amp_cfg("bfloat16")) is None
    assert "no bfloat16 instructions" in caplog.text


def _loader(device):
    batch = [
        make_input([(4, 4, 30, 30), (30, 20, 60, 50)], [0, 2], seed=1),
        make_input([(10, 8, 40, 44)], [1], seed=2),
    ]
    while True:
        yield batch


def test_bfloat16_step_runs_convolutions_in_bfloat16_and_keeps_float32_weights(monkeypatch):
    monkeypatch.setattr(amp, "cpu_has_native_bfloat16", lambda: True)
    cfg = amp_cfg("bfloat16")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    trainer = amp.build_step_trainer(cfg, model, _loader(cfg.MODEL.DEVICE), optimizer)
    assert isinstance(trainer, amp.AutocastTrainer) and trainer.dtype == torch.bfloat16
    conv_dtypes = []
    model.backbone.bottom_up.stem.conv1.register_forward_hook(
        lambda module, inputs, output: conv_dtypes.append(output.dtype)
    )
    before = [p.detach().clone() for p in model.parameters()]
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.storage = storage
        trainer.run_step()
        losses = {k: storage.history(k).latest() for k in ("loss_ins", "loss_cate")}
    assert conv_dtypes == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    changed = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert changed > len(before) // 2


def test_float32_and_float16_select_detectron2s_trainers():
    cfg = amp_cfg("bfloat16", enabled=False)
    model = build_model(cfg)
    trainer = amp.build_step_trainer(cfg, model, _loader("cpu"), build_optimizer(cfg, model))
    assert type(trainer) is SimpleTrainer
    if torch.cuda.is_available():
        cfg = amp_cfg("float16", device="cuda")
        model = build_model(cfg)
        trainer = amp.build_step_trainer(cfg, model, _loader("cuda"), build_optimizer(cfg, model))
        assert isinstance(trainer, AMPTrainer)
