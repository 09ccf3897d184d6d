#!/usr/bin/env python
"""Run a trained SOLO model on images and draw its predictions.

    python tools/predict.py --config-file configs/SOLO_shapes_quick.yaml \
        --input datasets/shapes/val --output output/vis [--json preds.json] \
        MODEL.WEIGHTS output/SOLO_shapes_quick/model_final.pth

``--input`` takes image files, folders (their images, sorted) or glob patterns. Each image is
written to ``--output`` as a PNG with masks, classes and scores drawn by Detectron2's
``Visualizer``: the detections above the drawing threshold, one label per object (of masks that
overlap, the best-scored one; ``solo_d2.visualization``). The threshold is the one the
evaluation of the checkpoint chose from the validation precision
(``<weights folder>/inference/<dataset>/drawing_threshold.json``), else 0.3, unless
``--confidence-threshold`` is given. ``--json`` writes COCO-style results of all detections (RLE
masks, XYWH boxes, 1-based ``category_id`` in the order of ``thing_classes``, plus
``file_name``).

With ``--onnx model.onnx`` (written by ``tools/export_model.py``) the exported model runs in ONNX
Runtime (``solo_d2.export.OnnxPredictor``: the same input resize as DefaultPredictor, read from
the model's metadata); ``--config-file`` and weights are then not needed (a config given only
names the class names' dataset when the model has none stored).

    python tools/predict.py --onnx out/model.onnx --input datasets/shapes/val --output output/vis
"""

import argparse
import glob
import json
import logging
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import tqdm

import solo_d2  # compat shims and registrations before detectron2
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer
from solo_d2.engine import check_weights
from solo_d2.visualization import find_drawing_threshold, select_for_drawing

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_THRESHOLD = 0.3
logger = logging.getLogger("solo_d2.predict")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", metavar="FILE", help="required unless --onnx")
    parser.add_argument("--onnx", metavar="FILE", help="run this exported ONNX model instead")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or globs")
    parser.add_argument("--output", required=True, help="folder for the drawn PNGs")
    parser.add_argument("--json", help="also write COCO-style results to this file")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        help="min score drawn (default: the evaluation's drawing threshold, else 0.3)",
    )
    parser.add_argument("--max-images", type=int, default=0, help="stop after N images (0: all)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def list_images(inputs):
    """Image paths from files, folders and glob patterns, in a stable order."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(os.listdir(item))
            paths += [os.path.join(item, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(item):
            paths.append(item)
        else:
            matches = sorted(glob.glob(os.path.expanduser(item)))
            if not matches:
                raise FileNotFoundError(
                    f"--input {item!r} is neither a file, a folder nor a matching glob"
                )
            paths += matches
    return paths


def load_cfg(args):
    """The config of ``--config-file`` with the trailing overrides (frozen)."""
    cfg = get_cfg()
    solo_d2.add_solo_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def drawing_metadata(cfg):
    """Metadata of the config's first test dataset (class names for drawing)."""
    return MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")


def setup_cfg(args):
    cfg = load_cfg(args)
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("no weights to predict with: add MODEL.WEIGHTS path/to/model.pth")
    check_weights(cfg)
    return cfg


def default_predictor(cfg):
    """(BGR image -> Instances on the CPU, metadata for drawing) of Detectron2's predictor."""
    predictor = DefaultPredictor(cfg)

    def predict(image):
        return predictor(image)["instances"].to("cpu")

    return predict, drawing_metadata(cfg)


def onnx_predictor(args):
    """(BGR image -> Instances, metadata for drawing) of an exported ONNX model."""
    from solo_d2.export import OnnxPredictor

    predictor = OnnxPredictor(args.onnx)
    class_names = predictor.metadata.get("class_names")
    if args.config_file:
        class_names = class_names or drawing_metadata(load_cfg(args)).get("thing_classes", None)
    metadata = MetadataCatalog.get(f"__solo_d2_onnx:{os.path.abspath(args.onnx)}")
    if class_names and not metadata.get("thing_classes", None):
        metadata.set(thing_classes=list(class_names))
    return predictor, metadata


def score_threshold(args, cfg):
    """``--confidence-threshold``, else the drawing threshold of the checkpoint's evaluation,
    else :data:`DEFAULT_THRESHOLD` (logged)."""
    if args.confidence_threshold is not None:
        return args.confidence_threshold
    found = find_drawing_threshold(cfg.MODEL.WEIGHTS, cfg.DATASETS.TEST) if cfg else None
    if found is None:
        logger.info(
            "drawing detections with score >= %s (no evaluation threshold)", DEFAULT_THRESHOLD
        )
        return DEFAULT_THRESHOLD
    logger.info(
        "drawing detections with score >= %s: validation precision %s at recall %s (%s, %s)",
        found["score_threshold"],
        found["precision"],
        found["recall"],
        found["rule"],
        found["file"],
    )
    return found["score_threshold"]


def instances_to_coco(instances, file_name, image_id):
    """COCO-style result dicts of one image's predictions."""
    results = []
    boxes = instances.pred_boxes.tensor.numpy()
    for k in range(len(instances)):
        rle = mask_util.encode(np.asfortranarray(instances.pred_masks[k].numpy().astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x1, y1, x2, y2 = boxes[k].tolist()
        results.append(
            {
                "image_id": image_id,
                "file_name": file_name,
                "category_id": int(instances.pred_classes[k]) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(instances.scores[k]),
                "segmentation": rle,
            }
        )
    return results


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="solo_d2")
    if not args.config_file and not args.onnx:
        raise ValueError("give --config-file (and MODEL.WEIGHTS), or --onnx model.onnx")
    cfg = None if args.onnx else setup_cfg(args)
    paths = list_images(args.input)
    if args.max_images > 0:
        paths = paths[: args.max_images]
    if not paths:
        raise FileNotFoundError(f"no images found in {args.input}")
    predict, metadata = onnx_predictor(args) if args.onnx else default_predictor(cfg)
    threshold = score_threshold(args, cfg)
    os.makedirs(args.output, exist_ok=True)
    coco_results, skipped = [], []
    for image_id, path in enumerate(tqdm.tqdm(paths, desc="predict")):
        image = cv2.imread(path, cv2.IMREAD_COLOR)  # BGR, as DefaultPredictor expects
        if image is None:
            logger.warning(
                "skipping %s: not a readable image (missing, truncated or not an image)", path
            )
            skipped.append(path)
            continue
        instances = predict(image)
        drawn = select_for_drawing(instances, threshold)
        drawing = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
        drawing = drawing.draw_instance_predictions(drawn).get_image()
        out_path = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        cv2.imwrite(out_path, drawing[:, :, ::-1])
        if args.json:
            coco_results += instances_to_coco(instances, path, image_id)
    logger.info("wrote %d drawn predictions to %s", len(paths) - len(skipped), args.output)
    if skipped:
        logger.warning("skipped %d unreadable file(s): %s", len(skipped), ", ".join(skipped))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(coco_results, f)
        logger.info("wrote %d COCO-style results to %s", len(coco_results), args.json)
    return coco_results


if __name__ == "__main__":
    main()
