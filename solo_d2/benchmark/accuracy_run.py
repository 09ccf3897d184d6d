"""Train one model on the shapes data for a wall-clock budget, evaluating periodically.

    python -m solo_d2.benchmark.accuracy_run --model SOLO --budget 240 --evaluations 4 \\
        --output DIR [KEY VALUE ...]

The process used by the ``accuracy`` section (:mod:`solo_d2.benchmark.sections.accuracy`):
SOLO heads use their ``configs/<MODEL>_shapes_quick.yaml``; ``MaskRCNN`` is Detectron2's
model-zoo Mask R-CNN with the same backbone (ResNet-18-FPN from scratch, the quick configs'
norm), input size, batch, learning-rate schedule and data. Training time excludes evaluations;
the run stops once the budget is spent and is then evaluated a last time (or, when the
schedule ends first, evaluated at its end). Writes ``DIR/curve.json``.
"""

import argparse
import json
import logging
import os
import time

import torch

import solo_d2
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from solo_d2.engine import Trainer

from .settings import MASK_RCNN, MASK_RCNN_CONFIG

__all__ = ["accuracy_config", "train_for_budget"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Everything the compared models share, read from the SOLO quick config.
SHARED_PREFIXES = ("INPUT.", "SOLVER.", "DATALOADER.", "DATASETS.", "SEED", "MODEL.RESNETS.")
SHARED_PREFIXES += ("MODEL.FPN.", "MODEL.BACKBONE.", "MODEL.PIXEL_", "MODEL.WEIGHTS")
SHARED_PREFIXES += ("MODEL.DEVICE",)
LOSS_INS_MARK = 2.5


def _flatten(node, prefix=""):
    for key, value in node.items():
        if hasattr(value, "items"):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def accuracy_config(model: str, opts=()):
    """The config of ``model`` (a SOLO quick-config name or ``MaskRCNN``) with ``opts``."""
    solo = get_cfg()
    solo_d2.add_solo_config(solo)
    solo_model = "SOLO" if model == MASK_RCNN else model
    solo.merge_from_file(os.path.join(REPO, "configs", f"{solo_model}_shapes_quick.yaml"))
    solo.merge_from_list(list(opts))
    if model != MASK_RCNN:
        return solo
    cfg = model_zoo.get_config(MASK_RCNN_CONFIG)
    solo_d2.add_solo_config(cfg)  # the record checks read MODEL.SOLO.NUM_CLASSES
    shared = [
        item
        for key, value in _flatten(solo)
        if key.startswith(SHARED_PREFIXES) and key in dict(_flatten(cfg))
        for item in (key, value)
    ]
    cfg.merge_from_list(shared)
    cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", solo.MODEL.SOLO.NUM_CLASSES])
    cfg.merge_from_list(["MODEL.SOLO.NUM_CLASSES", solo.MODEL.SOLO.NUM_CLASSES])
    return cfg


class _BudgetSpent(Exception):
    pass


class WallClockBudget(HookBase):
    """Evaluates every ``budget / evaluations`` seconds of training and stops after ``budget``.

    Records ``curve``: (training seconds, iteration, mask AP, AP50, AP75, box AP) per evaluation,
    and the iteration at which the 20-iteration median of ``loss_ins`` first falls below 2.5.
    """

    def __init__(self, budget: float, evaluations: int):
        self.budget, self.evaluations = budget, evaluations
        self.trained = 0.0
        self.curve = []
        self.loss_ins_below_mark = None
        self._marks = [budget * (k + 1) / evaluations for k in range(evaluations)]

    def before_step(self):
        self._start = time.perf_counter()

    def after_step(self):
        self.trained += time.perf_counter() - self._start
        storage = self.trainer.storage
        if self.loss_ins_below_mark is None and "loss_ins" in storage.histories():
            if storage.history("loss_ins").median(20) < LOSS_INS_MARK:
                self.loss_ins_below_mark = self.trainer.iter
        if self._marks and self.trained >= self._marks[0]:
            self._marks.pop(0)
            self.evaluate()
            if not self._marks:
                raise _BudgetSpent

    def evaluate(self, iterations=None):
        """Evaluate the model after ``iterations`` (default: the current step's count)."""
        results = Trainer.test(self.trainer.cfg, self.trainer.model)
        segm, bbox = results.get("segm", {}), results.get("bbox", {})
        self.curve.append(
            {
                "seconds": round(self.trained, 1),
                "iteration": self.trainer.iter + 1 if iterations is None else iterations,
                "mask_ap": segm.get("AP"),
                "ap50": segm.get("AP50"),
                "ap75": segm.get("AP75"),
                "box_ap": bbox.get("AP"),
            }
        )


def train_for_budget(cfg, budget: float, evaluations: int) -> dict:
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    hook = WallClockBudget(budget, evaluations)
    trainer.register_hooks([hook])
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    try:
        trainer.train()
    except _BudgetSpent:
        pass
    else:  # the schedule (SOLVER.MAX_ITER) ended within the budget: evaluate the final model
        if not hook.curve or hook.curve[-1]["iteration"] < cfg.SOLVER.MAX_ITER:
            hook.evaluate(iterations=cfg.SOLVER.MAX_ITER)
    return {
        "curve": hook.curve,
        "training_seconds": round(hook.trained, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "iterations": hook.curve[-1]["iteration"] if hook.curve else trainer.iter,
        "loss_ins_below_2.5": hook.loss_ins_below_mark,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--budget", type=float, required=True, help="training seconds")
    parser.add_argument("--evaluations", type=int, default=4)
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = accuracy_config(args.model, args.opts)
    cfg.merge_from_list(["OUTPUT_DIR", args.output, "TEST.EVAL_PERIOD", 0])
    cfg.merge_from_list(["SOLVER.CHECKPOINT_PERIOD", 10**9])
    os.makedirs(args.output, exist_ok=True)
    setup_logger(args.output)
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    result = dict(train_for_budget(cfg, args.budget, args.evaluations), model=args.model)
    with open(os.path.join(args.output, "curve.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
