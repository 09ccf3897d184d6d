#!/usr/bin/env python
"""Convert a published SOLO / SOLOv2 checkpoint (original code, AdelaiDet, mmdetection) to solo_d2.

    python tools/convert_solo_checkpoint.py SOLOv2_R50_3x.pth SOLOv2_R50_3x_d2.pth \
        --config configs/SOLOv2_R50_3x.yaml

The output is a Detectron2 checkpoint (``{"model": ..., "__author__": ...}``; ``.pth`` with
tensors, or ``.pkl`` with NumPy arrays) for ``MODEL.WEIGHTS``. Loading the released file
directly with ``MODEL.WEIGHTS`` converts it the same way on the fly; this tool is for keeping a
converted copy, and with ``--config`` it also checks that every tensor fits that config. The
mapping rules are in ``solo_d2/checkpoint`` (docs/CHECKPOINTS.md).
"""

import argparse
import os
import pickle
import sys

import torch

import solo_d2
from detectron2.config import get_cfg
from solo_d2.checkpoint import SOURCES, convert_checkpoint, load_weights_file
from solo_d2.checkpoint.verify import compare_with_model, model_state_shapes


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="the released checkpoint file")
    parser.add_argument("output", help="the solo_d2 checkpoint to write (.pth or .pkl)")
    parser.add_argument("--source", default="auto", choices=("auto", *SOURCES))
    parser.add_argument(
        "--config", metavar="CFG", help="a solo_d2 config the result must load into exactly"
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow full unpickling of the input (runs code from the file: trusted files only)",
    )
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    shapes = None
    if args.config:
        cfg = get_cfg()
        solo_d2.add_solo_config(cfg)
        cfg.merge_from_file(args.config)
        shapes = model_state_shapes(cfg)
    checkpoint = load_weights_file(args.input, trust_pickle=args.trust_pickle)
    converted = convert_checkpoint(checkpoint, args.source, target_shapes=shapes)
    state_dict = converted.state_dict
    print(f"source layout: {converted.source}; {len(state_dict)} tensors converted")
    print(f"dropped by rule: {len(converted.dropped)} (e.g. {converted.dropped[:2]})")
    if converted.padded_dcn_v1:
        print(f"DCN v1 offsets padded to the modulated layout: {len(converted.padded_dcn_v1)}")
    if converted.classes:
        print(f"classes in the checkpoint metadata: {len(converted.classes)}")
        outputs = state_dict.get("head.cate_pred.weight")
        if outputs is not None and len(converted.classes) != outputs.shape[0]:
            print(
                f"warning: the metadata lists {len(converted.classes)} classes but the category "
                f"layer has {outputs.shape[0]} outputs"
            )
    if shapes is not None:
        report = compare_with_model(state_dict, shapes)
        print(f"against {args.config}: {report}")
        if not report.ok:
            return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    result = {"model": state_dict, "__author__": f"solo_d2 converter ({converted.source})"}
    if args.output.endswith(".pkl"):
        result["model"] = {k: v.numpy() for k, v in state_dict.items()}
        with open(args.output, "wb") as f:
            pickle.dump(result, f)
    else:
        torch.save(result, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
