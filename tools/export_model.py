#!/usr/bin/env python
"""Export a SOLO / SOLOv2 model to ONNX or TorchScript, post-processing included.

    python tools/export_model.py --config-file configs/SOLOv2_R50_3x.yaml --format onnx \
        --output out/ [--sample-image IMG] [--opset 19] MODEL.WEIGHTS path/or/url/model.pth

Follows Detectron2's ``tools/deploy/export_model.py``: ``--config-file``, ``--format``,
``--output``, ``--sample-image`` and trailing ``KEY VALUE`` config overrides (``MODEL.WEIGHTS``
takes a solo_d2 checkpoint or a released original one). Writes ``OUTPUT/model.onnx`` (or
``model.ts``) and prints its input and output names and shapes. The graph takes ``image``
Float[3, H, W] (0..255, ``INPUT.FORMAT`` channel order, resized as DefaultPredictor does) and
returns ``masks`` Bool[N, H, W], ``scores`` Float[N], ``classes`` Int64[N], ``boxes``
Float[N, 4]. Unless ``--no-verify``, the exported model is run on the sample image (ONNX
Runtime / TorchScript) and compared with eager PyTorch (``solo_d2.export.verify``: equal up to
float rounding, which may exchange detections scored within rounding of a cut).
"""

import argparse
import json
import logging
import sys

import torch

import solo_d2  # compat shims and registrations before detectron2
from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger
from solo_d2.engine import check_weights
from solo_d2.export import (
    DEFAULT_OPSET,
    FORMATS,
    OUTPUT_NAMES,
    build_export_model,
    export_from_config,
    load_torchscript,
    onnx_signature,
    sample_image,
)
from solo_d2.export.model import INPUT_DIMS, OUTPUT_DIMS
from solo_d2.export.verify import match_detections

logger = logging.getLogger("solo_d2.export")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", choices=sorted(FORMATS), default="onnx")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--sample-image", help="image to trace with (default: a fixed pseudo-random image)"
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 19 for DCN configs)"
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip running the export on the sample image"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def setup_cfg(args):
    cfg = get_cfg()
    solo_d2.add_solo_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    check_weights(cfg)
    return cfg


def describe(path, fmt, image):
    """{"inputs": {...}, "outputs": {...}} names -> [dtype, dims] of the exported file."""
    if fmt == "onnx":
        return onnx_signature(path)
    module, _ = load_torchscript(path)
    with torch.no_grad():
        outputs = module(image)
    return {
        "inputs": {"image": ["float32", INPUT_DIMS["image"]]},
        "outputs": {
            name: [str(o.dtype).replace("torch.", ""), OUTPUT_DIMS[name]]
            for name, o in zip(OUTPUT_NAMES, outputs)
        },
    }


def run_exported(path, fmt, image):
    if fmt == "onnx":
        from solo_d2.export.predictor import _import_onnxruntime, default_session_options

        session = _import_onnxruntime().InferenceSession(
            path, default_session_options(), providers=["CPUExecutionProvider"]
        )
        return session.run(None, {"image": image.numpy()})
    module, _ = load_torchscript(path)
    with torch.no_grad():
        return [o.numpy() for o in module(image)]


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="solo_d2")
    cfg = setup_cfg(args)
    model = build_export_model(cfg)
    path = export_from_config(
        cfg, args.format, args.output, args.sample_image, opset=args.opset, model=model
    )
    image = sample_image(cfg, args.sample_image)
    signature = describe(path, args.format, image)
    print(f"wrote {path}")
    for kind in ("inputs", "outputs"):
        for name, (dtype, dims) in signature[kind].items():
            print(f"  {kind[:-1]:6s} {name:8s} {dtype:8s} [{', '.join(map(str, dims))}]")
    report = None
    if not args.no_verify:
        with torch.no_grad():
            eager = model([{"image": image}])[0]["instances"]
        expected = [eager.pred_masks, eager.scores, eager.pred_classes, eager.pred_boxes.tensor]
        report = match_detections(
            expected,
            run_exported(path, args.format, image),
            max_detections=cfg.MODEL.SOLO.MAX_PER_IMG,
            score_floor=cfg.MODEL.SOLO.UPDATE_THRESH_TEST,
        )
        print(f"verified on the sample image ({tuple(image.shape[1:])}): {json.dumps(report)}")
        if report["ok"] and report["exchanged"]:
            print(
                f"  {report['exchanged']} detections exchanged at a cut (the top "
                f"{cfg.MODEL.SOLO.MAX_PER_IMG} or the update threshold) between candidates scored "
                f"within float rounding of it: {report['exchanged_scores']}"
            )
        if not report["ok"]:
            logger.error("the exported model's detections differ from eager PyTorch's")
            sys.exit(1)
    return {"path": path, "signature": signature, "verify": report}


if __name__ == "__main__":
    main()
