"""Training for a wall-clock budget (``SOLVER.TIME_BUDGET_S``).

:class:`TimeBudget` is a trainer hook. After ``SOLVER.TIME_BUDGET_MEASURE_ITERS`` iterations it
measures the speed of this machine and fixes the number of iterations so that training, its
periodic evaluations and the final evaluation end within the budget, counted from the creation
of the trainer (building the model and the data, which may generate a dataset, included).
``SOLVER.MAX_ITER`` then only gives the schedule its shape: the lr steps (``SOLVER.STEPS``) and
the evaluations (``TEST.EVAL_PERIOD``) stay at the same fractions of the schedule, the warm-up
(``SOLVER.WARMUP_ITERS``) keeps its length. A fast machine trains more
iterations than ``MAX_ITER``, a slow one fewer; the choice is logged.

The plan is corrected as training goes: every ``5 x MEASURE_ITERS`` iterations from the speed
of the recent ones, and after each evaluation from its measured duration. Before the first
evaluation has run, one is assumed to cost as much time per test image as a training iteration
per training image. Steps already passed stay where they happened. In a multi-process run every
process follows the plan of the first. A resumed run keeps the plan saved in its checkpoint.
"""

import logging
import math
import statistics
import time
from typing import Callable, List, Optional

import torch
from fvcore.common.param_scheduler import ParamScheduler

from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase, hooks
from detectron2.solver import LRMultiplier, build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter

__all__ = ["SchedulePlan", "TimeBudget", "plan_iterations", "scaled_schedule"]

logger = logging.getLogger(__name__)


class SchedulePlan:
    """The iteration count, lr steps and evaluation points (iteration counts after which an
    evaluation runs, the final one aside) chosen for a budget."""

    def __init__(self, max_iter: int, steps: List[int], eval_points: List[int]):
        self.max_iter, self.steps, self.eval_points = max_iter, steps, eval_points

    def __repr__(self):
        return (
            f"SchedulePlan(max_iter={self.max_iter}, steps={self.steps}, "
            f"eval_points={self.eval_points})"
        )


def _fractions(period: int, reference: int) -> List[float]:
    """The evaluations of ``TEST.EVAL_PERIOD`` before the end, as fractions of ``MAX_ITER``."""
    if period <= 0:
        return []
    return [k * period / reference for k in range(1, math.ceil(reference / period))]


def scaled_schedule(
    cfg, max_iter: int, current_iter: int = 0, previous: Optional[SchedulePlan] = None
) -> SchedulePlan:
    """``cfg``'s schedule stretched to ``max_iter`` iterations: the lr steps of ``SOLVER.STEPS``
    and the evaluations of ``TEST.EVAL_PERIOD`` at the same fractions of ``SOLVER.MAX_ITER``.
    What has happened by ``current_iter`` under the ``previous`` plan stays where it was; what
    has not is never moved to or before ``current_iter`` (a shrinking plan would skip it), but
    to ``current_iter + 1`` at the earliest."""
    reference = cfg.SOLVER.MAX_ITER

    def scale(reference_points, previous_points):
        points = []
        for k, fraction in enumerate(reference_points):
            if previous is not None and previous_points[k] <= current_iter:  # happened
                points.append(previous_points[k])
            elif previous is not None:
                points.append(max(round(fraction * max_iter), current_iter + 1))
            else:
                points.append(round(fraction * max_iter))
        return points

    steps = scale([s / reference for s in cfg.SOLVER.STEPS], previous.steps if previous else [])
    evals = scale(
        _fractions(cfg.TEST.EVAL_PERIOD, reference), previous.eval_points if previous else []
    )
    return SchedulePlan(max_iter, steps, [e for e in evals if 0 < e < max_iter])


def lr_multiplier(
    cfg, plan: SchedulePlan, build_lr_scheduler: Callable = build_lr_scheduler
) -> ParamScheduler:
    """The lr multiplier that ``build_lr_scheduler`` (Detectron2's, or a trainer's override)
    makes for ``cfg`` with ``plan``'s iteration count and lr steps. It is built on a throwaway
    optimizer, so that the trainer's own is left alone."""
    planned = cfg.clone()
    planned.defrost()
    planned.SOLVER.MAX_ITER = plan.max_iter
    planned.SOLVER.STEPS = tuple(s for s in plan.steps if s < plan.max_iter)  # fvcore: < updates
    throwaway = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(planned, throwaway)
    if not isinstance(scheduler, LRMultiplier):
        raise TypeError(
            f"SOLVER.TIME_BUDGET_S needs Detectron2's LRMultiplier scheduler, got "
            f"{type(scheduler).__name__}"
        )
    return scheduler._multiplier


def plan_iterations(
    cfg,
    iteration: int,
    seconds_left: float,
    seconds_per_iter: float,
    seconds_per_eval: float,
    previous: Optional[SchedulePlan] = None,
) -> int:
    """The largest ``max_iter`` whose iterations from ``iteration`` (the one about to run) and
    evaluations (the periodic ones still ahead under :func:`scaled_schedule` and the final one)
    fit in ``seconds_left``; at least ``iteration + 1``."""

    def seconds_needed(max_iter):
        points = scaled_schedule(cfg, max_iter, iteration, previous).eval_points
        evals = 1 + sum(1 for e in points if e > iteration)  # and the final one
        return (max_iter - iteration) * seconds_per_iter + evals * seconds_per_eval

    max_iter = iteration + max(1, int(seconds_left / seconds_per_iter))
    while max_iter > iteration + 1 and seconds_needed(max_iter) > seconds_left:
        shortfall = seconds_needed(max_iter) - seconds_left
        max_iter = max(iteration + 1, max_iter - max(1, math.ceil(shortfall / seconds_per_iter)))
    return max_iter


class TimeBudget(HookBase):
    """Fit the schedule to ``SOLVER.TIME_BUDGET_S`` seconds of wall-clock time (module
    docstring). Register it first, so that a plan applies to the iteration it is made before
    (the lr, checkpoint and writer hooks read it). It runs the periodic evaluations itself, at
    the planned points (through Detectron2's ``EvalHook``, whose own period it turns off), and
    times them; the ``EvalHook`` still runs the final one."""

    def __init__(self, cfg, test_images: Optional[int] = None):
        self.cfg = cfg
        self.budget = float(cfg.SOLVER.TIME_BUDGET_S)
        self.measure_iters = max(2, int(cfg.SOLVER.TIME_BUDGET_MEASURE_ITERS))
        self._test_images = test_images
        self._start = time.perf_counter()  # the budget counts from here
        self.plan: Optional[SchedulePlan] = None
        self._resumed_plan = None
        self._durations: List[float] = []  # wall time of each iteration, with its hooks
        self._eval_seconds: Optional[float] = None
        self._last_after_step = None  # (iteration, time) of the last after_step
        self._evaluated_after = None  # the iteration after which this hook evaluated
        self._last_plan_iter = None
        self._first_plan_made = False
        self._eval_hook = None

    # ------------------------------------------------------------------ hook interface
    def before_train(self):
        self._first_iter = self.trainer.iter
        evals = [h for h in self.trainer._hooks if isinstance(h, hooks.EvalHook)]
        self._eval_hook = evals[0] if evals else None
        if self._eval_hook is not None:
            self._eval_hook._period = 0  # the periodic evaluations run from here
        if self._resumed_plan is not None:
            saved = self._resumed_plan
            plan = SchedulePlan(saved["max_iter"], list(saved["steps"]), list(saved["eval_points"]))
            self._apply(plan)
            logger.info("Time budget: resumed with the saved plan %s", self.plan)
        else:  # until the first plan: the configured schedule
            self.plan = scaled_schedule(self.cfg, self.cfg.SOLVER.MAX_ITER)

    def before_step(self):
        now, iteration = time.perf_counter(), self.trainer.iter
        if self._resumed_plan is not None:
            return
        done = iteration - self._first_iter
        if self._evaluated_after == iteration - 1:
            self._replan(now, iteration, "after an evaluation")
        elif not self._first_plan_made and done >= self.measure_iters:
            self._first_plan_made = True
            self._replan(now, iteration, f"after {done} iterations")
        elif self._first_plan_made and iteration - self._last_plan_iter >= 5 * self.measure_iters:
            self._replan(now, iteration, "")

    def after_step(self):
        iteration, now = self.trainer.iter, time.perf_counter()
        last = self._last_after_step
        if last is not None and last[0] == iteration - 1:
            self._durations.append(now - last[1])
        next_iter = iteration + 1
        due = next_iter in self.plan.eval_points and next_iter < self.trainer.max_iter
        if due and self._eval_hook is not None:
            self._eval_hook._do_eval()
            self._eval_seconds = time.perf_counter() - now
            self._evaluated_after = iteration
        self._last_after_step = (iteration, time.perf_counter())

    def state_dict(self):
        if self._resumed_plan is None and not self._first_plan_made:
            return {}
        return {
            "max_iter": self.plan.max_iter,
            "steps": list(self.plan.steps),
            "eval_points": list(self.plan.eval_points),
        }

    def load_state_dict(self, state_dict):
        self._resumed_plan = state_dict or None

    # ------------------------------------------------------------------ planning
    def _seconds_per_eval(self, seconds_per_iter: float) -> float:
        if self._eval_seconds is not None:
            return self._eval_seconds
        if self._test_images is None:
            self._test_images = sum(len(DatasetCatalog.get(n)) for n in self.cfg.DATASETS.TEST)
        return self._test_images / self.cfg.SOLVER.IMS_PER_BATCH * seconds_per_iter

    def _replan(self, now: float, iteration: int, reason: str):
        if self._resumed_plan is not None or len(self._durations) < 2:
            return
        recent = self._durations[1:][-5 * self.measure_iters :]  # the first one warms up
        seconds_per_iter = statistics.mean(recent)
        seconds_per_eval = self._seconds_per_eval(seconds_per_iter)
        seconds_left = self.budget - (now - self._start)
        max_iter = plan_iterations(
            self.cfg, iteration, seconds_left, seconds_per_iter, seconds_per_eval, self.plan
        )
        max_iter = comm.all_gather(max_iter)[0]  # every process follows the first one's plan
        plan = scaled_schedule(self.cfg, max_iter, iteration, self.plan)
        self._last_plan_iter = iteration
        previous = self.plan.max_iter
        self._apply(plan)
        if reason or abs(plan.max_iter - previous) > 0.01 * previous:
            logger.info(
                "Time budget %.0f s%s: %.3f s/iteration, %.1f s per evaluation, %.0f s left at "
                "iteration %d: %d iterations (lr steps at %s, evaluations after %s)%s",
                self.budget,
                f" ({reason})" if reason else "",
                seconds_per_iter,
                seconds_per_eval,
                seconds_left,
                iteration,
                plan.max_iter,
                plan.steps,
                plan.eval_points or "-",
                f" instead of SOLVER.MAX_ITER {self.cfg.SOLVER.MAX_ITER}"
                if plan.max_iter != self.cfg.SOLVER.MAX_ITER
                else "",
            )

    def _apply(self, plan: SchedulePlan):
        """Give ``plan`` to the trainer, its lr scheduler and the hooks that read the schedule."""
        trainer = self.trainer
        scheduler = trainer.scheduler
        if not isinstance(scheduler, LRMultiplier):
            raise TypeError(
                f"SOLVER.TIME_BUDGET_S needs Detectron2's LRMultiplier scheduler, got "
                f"{type(scheduler).__name__}"
            )
        scheduler._multiplier = lr_multiplier(self.cfg, plan, trainer.build_lr_scheduler)
        scheduler._max_iter = plan.max_iter
        # the lr of the coming iteration under the new plan (scheduler.last_epoch == iter)
        for group, lr in zip(trainer.optimizer.param_groups, scheduler.get_lr()):
            group["lr"] = lr
        trainer.max_iter = plan.max_iter
        for hook in trainer._hooks:
            if isinstance(hook, hooks.PeriodicCheckpointer):
                hook.max_iter = plan.max_iter
            elif isinstance(hook, hooks.PeriodicWriter):
                for writer in hook._writers:
                    if isinstance(writer, CommonMetricPrinter):
                        writer._max_iter = plan.max_iter
        self.plan = plan
