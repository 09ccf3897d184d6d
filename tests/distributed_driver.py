"""A small SOLO training run in several processes, for tests/test_distributed.py.

    python tests/distributed_driver.py --num-gpus 2 --data DIR --output DIR \
        [--heads SOLO,SOLOv2,...] [KEY VALUE ...]

For each head, runs solo_d2.engine.Trainer (DDP with find_unused_parameters=False) through
solo_d2.engine.launch on a 2-image dataset whose second image has no ground truth, so that at
every step one process has an image without gt while the other has positives, and writes
``OUTPUT/<head>/report.json`` (main process) with, per step, the number of gt instances each
process trained on and whether the parameters were identical on all processes.
"""

import json
import os

import torch

import solo_d2
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.engine import HookBase, default_argument_parser
from detectron2.utils import comm
from solo_d2.data import SHAPES_CLASSES, generate_shapes_dataset
from solo_d2.engine import Trainer, launch

from conftest import TINY_OVERRIDES  # the script's folder is on sys.path (spawn keeps it)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def register(data_dir):
    json_file, image_dir = generate_shapes_dataset(data_dir, "train", num_images=2, image_size=64)

    def one_image_without_gt():
        dicts = load_coco_json(json_file, image_dir, "dist_train")
        dicts[1]["annotations"] = []
        return dicts

    DatasetCatalog.register("dist_train", one_image_without_gt)
    DatasetCatalog.register("dist_val", lambda: load_coco_json(json_file, image_dir, "dist_val"))
    for name in ("dist_train", "dist_val"):
        MetadataCatalog.get(name).set(
            thing_classes=list(SHAPES_CLASSES), evaluator_type="coco", json_file=json_file
        )


class RecordingTrainer(Trainer):
    """Remembers how many gt instances this process's last batch had."""

    gt_counts = []

    @classmethod
    def build_train_loader(cls, cfg):
        loader = super().build_train_loader(cfg)

        def recording():
            for batch in loader:
                cls.gt_counts.append(sum(len(x["instances"]) for x in batch))
                yield batch

        return recording()


class ParameterAgreement(HookBase):
    """After every step: do all processes hold the same parameters, and what did each train on."""

    def __init__(self):
        self.steps = []

    def after_step(self):
        params = torch.cat([p.detach().flatten() for p in self.trainer.model.parameters()])
        digest = (params.double().sum().item(), params.double().abs().sum().item())
        digests = comm.all_gather(digest)
        counts = comm.all_gather(RecordingTrainer.gt_counts[-1])
        self.steps.append({"identical": len(set(digests)) == 1, "gt_per_process": counts})

    def after_train(self):
        if comm.is_main_process():
            with open(os.path.join(self.trainer.cfg.OUTPUT_DIR, "report.json"), "w") as f:
                json.dump({"world_size": comm.get_world_size(), "steps": self.steps}, f)


def main(args):
    register(args.data)
    for head in args.heads.split(","):
        RecordingTrainer.gt_counts.clear()
        train(head, os.path.join(args.output, head), args.opts)


def train(head, output, opts):
    cfg = get_cfg()
    solo_d2.add_solo_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "SOLO_shapes_quick.yaml"))
    cfg.merge_from_list(TINY_OVERRIDES)
    cfg.merge_from_list(
        ["DATASETS.TRAIN", "('dist_train',)", "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "2"]
        + ["DATALOADER.NUM_WORKERS", "0", "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False"]
        + ["MODEL.SOLO.NUM_CLASSES", str(len(SHAPES_CLASSES))]
        + ["INPUT.MIN_SIZE_TRAIN", "(64,)", "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", output]
        + ["MODEL.SOLO.HEAD", head]
        + opts
    )
    trainer = RecordingTrainer(cfg)
    trainer.register_hooks([ParameterAgreement()])
    trainer.resume_or_load(resume=False)
    trainer.train()


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--heads", default="SOLO", help="comma-separated MODEL.SOLO.HEAD values")
    args = parser.parse_args()
    launch(main, args.num_gpus, dist_url="auto", args=(args,))
