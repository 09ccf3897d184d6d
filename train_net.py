#!/usr/bin/env python
"""Train or evaluate SOLO with Detectron2's engine.

    python train_net.py --config-file configs/SOLO_R50_1x.yaml
    python train_net.py --config-file configs/SOLO_R50_1x.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file ... --num-gpus 8 SOLVER.IMS_PER_BATCH 16
    torchrun --nproc_per_node 8 train_net.py --config-file ...
    python train_net.py --config-file ... --coco-dataset my_train train.json images/ \\
        DATASETS.TRAIN '("my_train",)' MODEL.SOLO.NUM_CLASSES 3
"""

import solo_d2  # noqa: F401  (compat shims, SOLO registration, embedded datasets)
import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger
from solo_d2 import SOLOCheckpointer, add_solo_config
from solo_d2.data import register_coco_dataset
from solo_d2.engine import Trainer, check_amp, check_dataset_classes, check_weights, launch


def setup(args):
    cfg = get_cfg()
    add_solo_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="solo_d2")
    return cfg


def main(args):
    for name, json_file, image_root in args.coco_dataset or ():
        register_coco_dataset(name, json_file, image_root)
    cfg = setup(args)
    check_dataset_classes(cfg, eval_only=args.eval_only)
    check_weights(cfg)
    check_amp(cfg)
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("--eval-only needs a checkpoint: add MODEL.WEIGHTS path/to/model.pth")
        model = Trainer.build_model(cfg)
        # strict: every key must match the model (published SOLO layouts are converted on load)
        SOLOCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def get_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--coco-dataset",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON_FILE", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME (repeatable), then use NAME in "
        "DATASETS.TRAIN / DATASETS.TEST",
    )
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    # --num-gpus N: N processes per machine; NCCL with CUDA, gloo on the CPU (solo_d2.engine.launch)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
