"""The training optimizer: same updates and clipping as Detectron2's builder, fused kernels."""

import copy

import pytest
import torch

from detectron2.config import get_cfg
from solo_d2 import add_solo_config
from benchmarks.sections.optimizer import detectron2_optimizer  # the reference
from solo_d2.engine.optim import build_optimizer, clip_grad_norm_per_parameter_


def _cfg(optimizer, clip_type="norm", clip_value=0.5, amp=False):
    cfg = get_cfg()
    add_solo_config(cfg)
    cfg.SOLVER.OPTIMIZER = optimizer
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.WEIGHT_DECAY = 1e-3
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    cfg.SOLVER.AMP.ENABLED = amp
    return cfg


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.GroupNorm(2, 8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 1),
    )


@pytest.mark.parametrize("optimizer", ["SGD", "AdamW"])
@pytest.mark.parametrize("clip_type", ["norm", "value"])
def test_updates_equal_detectron2s_optimizer(optimizer, clip_type):
    cfg = _cfg(optimizer, clip_type)
    ours, reference = _model(), _model()
    opt_ours, opt_ref = build_optimizer(cfg, ours), detectron2_optimizer(cfg, reference)
    for group in opt_ours.param_groups:  # the settings both share come from the config
        assert group["weight_decay"] in (cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WEIGHT_DECAY_NORM)
        if optimizer == "SGD":
            assert (group["momentum"], group["nesterov"]) == (
                cfg.SOLVER.MOMENTUM,
                cfg.SOLVER.NESTEROV,
            )
    x = torch.randn(2, 3, 9, 9)
    for _ in range(5):
        for model, opt in ((ours, opt_ours), (reference, opt_ref)):
            opt.zero_grad()
            (model(x) ** 2).sum().mul(10).backward()  # large gradients: clipping is active
            opt.step()
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(ours.parameters(), _model().parameters()))


def test_uses_fused_kernels_except_under_float16_amp():
    model = _model()
    fused = build_optimizer(_cfg("AdamW"), model)
    assert all(group["fused"] for group in fused.param_groups)
    assert type(fused).__name__ == "AdamWWithGradientClip"
    under_amp = build_optimizer(_cfg("AdamW", amp=True), model)  # float16: a GradScaler
    assert not any(group["fused"] for group in under_amp.param_groups)
    assert all(group["foreach"] for group in under_amp.param_groups)
    bfloat16 = _cfg("AdamW", amp=True)
    bfloat16.SOLVER.AMP.PRECISION = "bfloat16"  # no scaler: fused
    assert all(group["fused"] for group in build_optimizer(bfloat16, model).param_groups)


def test_per_parameter_clipping_equals_clip_grad_norm_on_each_parameter():
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s)) for s in ((3, 4), (5,), (2, 2, 2), (1,))]
    for p, scale in zip(params, (10.0, 0.01, 3.0, 0.0)):
        p.grad = torch.randn_like(p) * scale
    expected = copy.deepcopy([p.grad for p in params])
    for g in expected:
        norm = g.norm()
        g.mul_(torch.clamp(1.0 / (norm + 1e-6), max=1.0))
    clip_grad_norm_per_parameter_(params + [torch.nn.Parameter(torch.ones(2))], 1.0)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g)
    assert params[0].grad.norm() == pytest.approx(1.0, rel=1e-4)  # clipped
    assert params[1].grad.norm() < 0.5  # untouched


def test_unknown_optimizer_or_clip_type_is_named():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER.*'Adam'"):
        build_optimizer(_cfg("Adam"), _model())
    with pytest.raises(ValueError, match="CLIP_TYPE.*'full_model'"):
        build_optimizer(_cfg("SGD", clip_type="full_model"), _model())
