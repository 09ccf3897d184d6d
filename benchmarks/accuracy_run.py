"""Train one model on a shapes case for a wall-clock budget, evaluating along the way.

    python -m benchmarks.accuracy_run --model SOLOv2 --case shapes --budget 470 \\
        --evaluations 4 --output DIR [KEY VALUE ...]

The process used by the ``accuracy`` and ``accuracy-sweep`` sections
(:mod:`benchmarks.sections.accuracy`). A case is a pair of embedded datasets and the SOLO config
made for it (:data:`CASES`); ``MaskRCNN`` is Detectron2's model-zoo Mask R-CNN with everything
the SOLO config of the case sets for the backbone (ResNet-18-FPN from scratch, its norm), the
input sizes, the batch, the optimizer, the schedule, mixed precision and the data; further
``KEY VALUE`` pairs tune it (ROIs per image, anchors, optimizer, lr). Every model trains with
``SOLVER.TIME_BUDGET_S`` (solo_d2's :class:`~solo_d2.engine.time_budget.TimeBudget`): its
schedule, lr steps included, is fitted to the budget, evaluations included, on this machine.
Writes ``DIR/curve.json``: per evaluation the wall seconds since the trainer was created, the
iteration and the APs.
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
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from solo_d2.engine import Trainer

from .settings import MASK_RCNN, MASK_RCNN_CONFIG, REPO

__all__ = ["CASES", "accuracy_config", "train_for_budget"]

#: case -> (SOLO config of the case's models, datasets): the shapes data of the demo, and
#: crowded small objects (15-30 shapes of 10-20 px per 256 px image).
CASES = {
    "shapes": "configs/{model}_shapes_quick.yaml",
    "shapes_dense": "configs/{model}_shapes_dense_quick.yaml",
}
# Everything the compared models share, read from the case's SOLO config.
SHARED_PREFIXES = ("INPUT.", "SOLVER.", "DATALOADER.", "DATASETS.", "SEED", "MODEL.RESNETS.")
SHARED_PREFIXES += ("MODEL.FPN.", "MODEL.BACKBONE.", "MODEL.PIXEL_", "MODEL.WEIGHTS")
SHARED_PREFIXES += ("MODEL.DEVICE", "MODEL.BASIC_RESNET.")


def _flatten(node, prefix=""):
    for key, value in node.items():
        if hasattr(value, "items"):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def accuracy_config(model: str, opts=(), case: str = "shapes"):
    """The config of ``model`` (a SOLO quick-config name or ``MaskRCNN``) on ``case`` with
    ``opts``. For Mask R-CNN, the options of shared settings (:data:`SHARED_PREFIXES`) go
    through the SOLO config it copies them from, the others (ROI heads, anchors) to its own."""
    if case not in CASES:
        raise ValueError(f"unknown accuracy case {case!r}, use one of {sorted(CASES)}")
    solo = get_cfg()
    solo_d2.add_solo_config(solo)
    solo_model = "SOLOv2" if model == MASK_RCNN else model
    solo.merge_from_file(os.path.join(REPO, CASES[case].format(model=solo_model)))
    pairs = list(zip(opts[::2], opts[1::2]))
    shared_opts = [x for k, v in pairs if k.startswith(SHARED_PREFIXES) for x in (k, v)]
    own_opts = [x for k, v in pairs if not k.startswith(SHARED_PREFIXES) for x in (k, v)]
    if model != MASK_RCNN:
        solo.merge_from_list(list(opts))
        return solo
    solo.merge_from_list(shared_opts)
    cfg = model_zoo.get_config(MASK_RCNN_CONFIG)
    solo_d2.add_solo_config(cfg)  # the record checks read MODEL.SOLO.NUM_CLASSES
    rcnn_keys = dict(_flatten(cfg))
    shared = [
        item
        for key, value in _flatten(solo)
        if key.startswith(SHARED_PREFIXES) and key in rcnn_keys
        for item in (key, value)
    ]
    cfg.merge_from_list(shared)
    cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", solo.MODEL.SOLO.NUM_CLASSES])
    cfg.merge_from_list(["MODEL.SOLO.NUM_CLASSES", solo.MODEL.SOLO.NUM_CLASSES])
    cfg.merge_from_list(own_opts)
    return cfg


def train_for_budget(cfg, budget: float, evaluations: int) -> dict:
    """Train ``cfg`` with ``SOLVER.TIME_BUDGET_S budget`` and ``evaluations`` evaluations at
    equal fractions of the fitted schedule (the last one at its end)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.TIME_BUDGET_S = int(budget)
    # evaluations at 1/n, 2/n, ... of the schedule, the last one at its end
    cfg.TEST.EVAL_PERIOD = max(1, cfg.SOLVER.MAX_ITER // evaluations) if evaluations > 1 else 0
    seed_all_rng(cfg.SEED)
    curve = []
    start = time.perf_counter()
    trainer = Trainer(cfg)

    def record(results):
        segm, bbox = results.get("segm", {}), results.get("bbox", {})
        curve.append(
            {
                "seconds": round(time.perf_counter() - start, 1),
                "iteration": min(trainer.iter + 1, trainer.max_iter),  # iterations done
                "mask_ap": segm.get("AP"),
                "ap50": segm.get("AP50"),
                "ap75": segm.get("AP75"),
                "box_ap": bbox.get("AP"),
            }
        )

    test = trainer.test

    def test_and_record(cfg_, model, evaluators=None):
        results = test(cfg_, model, evaluators)
        record(results)
        return results

    trainer.test = test_and_record  # the evaluation hook calls self.test
    trainer.resume_or_load(resume=False)
    trainer.train()
    return {
        "curve": curve,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "iterations": trainer.max_iter,
        "seconds_per_iteration": round(trainer.storage.history("time").global_avg(), 4),
        "budget": budget,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--case", default="shapes", choices=sorted(CASES))
    parser.add_argument("--budget", type=float, required=True, help="wall-clock seconds")
    parser.add_argument("--evaluations", type=int, default=4)
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = accuracy_config(args.model, args.opts, args.case)
    cfg.merge_from_list(["OUTPUT_DIR", args.output, "SOLVER.CHECKPOINT_PERIOD", 10**9])
    os.makedirs(args.output, exist_ok=True)
    setup_logger(args.output)
    setup_logger(args.output, name="solo_d2")  # the time budget's plans
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    result = train_for_budget(cfg, args.budget, args.evaluations)
    result.update(model=args.model, case=args.case, opts=args.opts)
    with open(os.path.join(args.output, "curve.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
