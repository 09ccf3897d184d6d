"""Training for a wall-clock budget (SOLVER.TIME_BUDGET_S, solo_d2.engine.time_budget).

The trainer runs for real (a tiny model on a few shapes images); only the clock of the budget
hook is simulated: every training iteration costs ``step_s`` and every evaluation ``eval_s``
simulated seconds, so the plans are exact and the same on any machine.
"""

import logging

import pytest
import torch

from conftest import tiny_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from solo_d2.data import SHAPES_CLASSES, generate_shapes_dataset, register_coco_dataset
from solo_d2.engine import Trainer, time_budget
from solo_d2.engine.time_budget import plan_iterations, scaled_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def perf_counter(self):
        return self.now


@pytest.fixture(scope="module")
def budget_data(tmp_path_factory):
    json_file, image_dir = generate_shapes_dataset(
        str(tmp_path_factory.mktemp("budget")), "train", num_images=4, image_size=64
    )
    if "budget_train" not in DatasetCatalog.list():
        register_coco_dataset("budget_train", json_file, image_dir)


class LrRecorder(HookBase):
    def __init__(self):
        self.lrs = []

    def before_step(self):
        self.lrs.append(self.trainer.optimizer.param_groups[0]["lr"])


def budget_cfg(output, extra=()):
    return tiny_cfg(
        extra=["MODEL.SOLO.NUM_CLASSES", str(len(SHAPES_CLASSES))]
        + ["DATASETS.TRAIN", "('budget_train',)", "DATASETS.TEST", "('budget_train',)"]
        + ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "100", "SOLVER.STEPS", "(80,)"]
        + ["SOLVER.WARMUP_ITERS", "4", "TEST.EVAL_PERIOD", "50", "SOLVER.BASE_LR", "0.001"]
        + ["SOLVER.TIME_BUDGET_MEASURE_ITERS", "4", "INPUT.MIN_SIZE_TRAIN", "(64,)"]
        + ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"]
        + ["DATALOADER.NUM_WORKERS", "0", "SEED", "0", "OUTPUT_DIR", str(output)]
        + list(extra)
    )


def train_on_fake_clock(cfg, monkeypatch, step_s, eval_s, resume=False, trainer_class=Trainer):
    """Train ``cfg``; each iteration advances the budget's clock by ``step_s``, each
    evaluation by ``eval_s``. Returns (trainer, lr per iteration, evaluation clock times,
    clock at the end)."""
    clock = FakeClock()
    monkeypatch.setattr(time_budget, "time", clock)
    evaluations = []
    original_test = Trainer.test.__func__

    def test(cls, cfg, model, evaluators=None):
        clock.now += eval_s
        evaluations.append(clock.now)
        return original_test(cls, cfg, model, evaluators)

    monkeypatch.setattr(Trainer, "test", classmethod(test))
    trainer = trainer_class(cfg)
    run_step = trainer._trainer.run_step

    def timed_step():
        clock.now += step_s
        run_step()

    trainer._trainer.run_step = timed_step
    recorder = LrRecorder()
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=resume)
    start = clock.now
    trainer.train()
    return trainer, recorder.lrs, [t - start for t in evaluations], clock.now - start


def test_scaled_schedule_keeps_the_fractions_and_what_has_happened():
    cfg = budget_cfg("unused")
    plan = scaled_schedule(cfg, 250)
    assert (plan.max_iter, plan.steps, plan.eval_points) == (250, [200], [125])
    previous = scaled_schedule(cfg, 100)  # step at 80, an evaluation after 50
    # at iteration 90 the step and the evaluation have happened: both stay when the plan grows
    grown = scaled_schedule(cfg, 300, current_iter=90, previous=previous)
    assert (grown.steps, grown.eval_points) == ([80], [50])
    # at iteration 40 neither has
    grown = scaled_schedule(cfg, 300, current_iter=40, previous=previous)
    assert (grown.steps, grown.eval_points) == ([240], [150])
    # a plan that shrinks at iteration 45 keeps what is still to come after it: the evaluation
    # (half of 80 = 40) comes right after iteration 45 instead of being skipped
    shrunk = scaled_schedule(cfg, 80, current_iter=45, previous=previous)
    assert (shrunk.steps, shrunk.eval_points) == ([64], [46])
    # every 25 of 100 iterations: three evaluations before the end
    cfg.TEST.EVAL_PERIOD = 25
    assert scaled_schedule(cfg, 40).eval_points == [10, 20, 30]


def test_plan_fits_iterations_and_evaluations_in_the_time_left():
    cfg = budget_cfg("unused")  # evaluations at half the schedule and at the end
    # 100 s at 1 s/iteration, 5 s per evaluation: 90 iterations + 2 evaluations
    assert plan_iterations(cfg, 0, 100.0, 1.0, 5.0) == 90
    # at iteration 60, after the half-way evaluation at 50: only the final one is left
    previous = scaled_schedule(cfg, 100)
    assert plan_iterations(cfg, 60, 40.0, 1.0, 5.0, previous) == 95
    # no time left: the iteration about to run is the last
    assert plan_iterations(cfg, 10, -3.0, 1.0, 5.0) == 11


@pytest.mark.parametrize("step_s", [0.5, 1.0])
def test_training_ends_within_the_budget_on_a_fast_and_a_slow_machine(
    budget_data, tmp_path, monkeypatch, caplog, step_s
):
    """A 60 s budget with evaluations of 2 s: 0.5 s/iteration gives about twice the iterations
    of 1 s/iteration; the lr step and the evaluation stay at 80 % and 50 % of the schedule."""
    cfg = budget_cfg(tmp_path, ["SOLVER.TIME_BUDGET_S", "60"])
    with caplog.at_level(logging.INFO, logger="solo_d2.engine.time_budget"):
        trainer, lrs, evaluations, elapsed = train_on_fake_clock(cfg, monkeypatch, step_s, 2.0)
    iterations = trainer.max_iter
    assert elapsed <= 60.0  # iterations, the half-way and the final evaluation
    assert elapsed > 60.0 - step_s - 2.0  # and the budget is used
    assert len(lrs) == iterations == trainer.iter
    expected = int((60 - 2 * 2) / step_s)  # the evaluations' cost is known after the first
    assert abs(iterations - expected) <= 2, (iterations, expected)
    assert len(evaluations) == 2  # half-way and final
    step = lrs.index(pytest.approx(1e-4))  # the lr step, where the plan put it
    assert abs(step - 0.8 * iterations) <= 2 and lrs[step - 1] == pytest.approx(0.001)
    assert abs(evaluations[0] - (0.5 * iterations * step_s + 2.0)) <= 2 * step_s
    assert (tmp_path / "model_final.pth").is_file()
    assert "Time budget 60 s (after 4 iterations)" in caplog.text
    assert "instead of SOLVER.MAX_ITER 100" in caplog.text


def test_a_budget_too_short_for_the_measurement_stops_after_it(budget_data, tmp_path, monkeypatch):
    cfg = budget_cfg(tmp_path, ["SOLVER.TIME_BUDGET_S", "3"])
    trainer, lrs, evaluations, elapsed = train_on_fake_clock(cfg, monkeypatch, 1.0, 2.0)
    assert trainer.iter == trainer.max_iter == 5  # 4 measured + the one being planned
    assert len(evaluations) == 1


def test_without_a_budget_the_configured_schedule_runs(budget_data, tmp_path, monkeypatch):
    cfg = budget_cfg(tmp_path, ["SOLVER.MAX_ITER", "12", "SOLVER.STEPS", "(9,)"])
    trainer, lrs, evaluations, _ = train_on_fake_clock(cfg, monkeypatch, 5.0, 2.0)
    assert trainer.iter == trainer.max_iter == 12 and len(lrs) == 12
    assert lrs[8] == pytest.approx(0.001) and lrs[9] == pytest.approx(1e-4)
    assert not any(isinstance(h, time_budget.TimeBudget) for h in trainer._hooks)


def test_a_resumed_run_keeps_the_saved_plan(budget_data, tmp_path, monkeypatch):
    extra = ["SOLVER.TIME_BUDGET_S", "40", "SOLVER.CHECKPOINT_PERIOD", "10"]
    train_on_fake_clock(budget_cfg(tmp_path, extra), monkeypatch, 0.5, 1.0)
    saved = torch.load(tmp_path / "model_0000019.pth", weights_only=True)
    planned = saved["trainer"]["hooks"]["TimeBudget"]["max_iter"]
    (tmp_path / "last_checkpoint").write_text("model_0000019.pth")
    # the resumed run is much slower but keeps the plan of the run that wrote the checkpoint
    resumed, lrs, _, _ = train_on_fake_clock(
        budget_cfg(tmp_path, extra), monkeypatch, 5.0, 1.0, resume=True
    )
    assert resumed.start_iter == 20 and resumed.max_iter == planned == resumed.iter
    assert len(lrs) == planned - 20


class CosineTrainer(Trainer):
    """A trainer whose own lr scheduler (cosine, whatever the config says) the budget follows."""

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
        return super().build_lr_scheduler(cfg, optimizer)


def test_the_planned_lr_comes_from_the_trainers_own_scheduler(budget_data, tmp_path, monkeypatch):
    """The plan rebuilds the trainer's ``build_lr_scheduler`` with the planned iteration count:
    a cosine schedule of 40 configured iterations reaches its half value half-way through the
    ~56 planned ones and ends near 0, not at 40."""
    extra = ["SOLVER.TIME_BUDGET_S", "30", "TEST.EVAL_PERIOD", "0", "SOLVER.MAX_ITER", "40"]
    cfg = budget_cfg(tmp_path, extra + ["SOLVER.STEPS", "(32,)"])
    trainer, lrs, _, _ = train_on_fake_clock(
        cfg, monkeypatch, 0.5, 2.0, trainer_class=CosineTrainer
    )
    iterations = trainer.max_iter
    assert iterations > 50 and len(lrs) == iterations
    assert lrs[iterations // 2] == pytest.approx(0.0005, rel=0.05)
    assert lrs[-1] < 0.01 * 0.001 and min(lrs[:40]) > 0.01 * 0.001
