"""Corrupt and odd dataset inputs: each trains (with a warning naming image and annotation) or
fails before training with an error naming the file and the field. Nothing fails mid-run."""

import json
import logging
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from conftest import REPO, TINY_OVERRIDES
from solo_d2.data import DatasetError, validate_dataset_dicts

SIZE = 64
SQUARE = [10.0, 10.0, 40.0, 10.0, 40.0, 40.0, 10.0, 40.0]


def image(seed=0, channels=3):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (SIZE, SIZE, channels), dtype=np.uint8)
    array[10:40, 10:40] = 255
    return array


def record(file_name, annotations=(), height=SIZE, width=SIZE, image_id=1, first_id=100):
    return {
        "file_name": str(file_name),
        "height": height,
        "width": width,
        "image_id": image_id,
        "annotations": [
            dict({"id": first_id + i, "category_id": 0, "iscrowd": 0, "bbox_mode": 1}, **a)
            for i, a in enumerate(annotations)
        ],
    }


def square(**overrides):
    return dict({"bbox": [10.0, 10.0, 30.0, 30.0], "segmentation": [SQUARE]}, **overrides)


@pytest.fixture
def good_png(tmp_path):
    path = tmp_path / "good.png"
    cv2.imwrite(str(path), image())
    return path


def errors_of(records, **kwargs):
    with pytest.raises(DatasetError) as error:
        validate_dataset_dicts(records, "bad", num_classes=4, **kwargs)
    return str(error.value)


def test_unreadable_files_fail_before_training_naming_file_and_field(tmp_path, good_png):
    (tmp_path / "text.png").write_text("not an image")
    truncated_header = tmp_path / "cut.jpg"
    truncated_header.write_bytes(good_png.read_bytes()[:10])
    message = errors_of(
        [
            record(tmp_path / "missing.png", image_id=1),
            record(tmp_path / "text.png", image_id=2),
            record(truncated_header, image_id=3),
        ]
    )
    for name in ("missing.png", "text.png", "cut.jpg"):
        assert f"{name}): file_name cannot be read as an image" in message
    assert "3 problem(s)" in message


def test_16_bit_single_channel_png_is_an_error(tmp_path):
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), (np.random.rand(SIZE, SIZE) * 65535).astype(np.uint16))
    assert "deep.png): file_name cannot be read as an image (it is a I;16" in errors_of(
        [record(path)]
    )


def test_size_disagreeing_with_the_annotations_is_an_error(tmp_path, good_png):
    message = errors_of([record(good_png, height=80, width=64)])
    assert "good.png): height/width are 80x64 in the annotations but the image is 64x64" in message


def test_exif_rotated_jpeg(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed: 64x48 stored, 48x64 shown
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(path, exif=exif.tobytes())
    # annotations of the displayed (rotated) image: fine, as Detectron2 rotates when reading
    validate_dataset_dicts([record(path, height=64, width=48)], "ok", num_classes=4)
    message = errors_of([record(path, height=48, width=64)])
    assert "is 64x48 after its EXIF rotation" in message


def test_grayscale_and_rgba_pngs_are_fine(tmp_path):
    gray, rgba = tmp_path / "gray.png", tmp_path / "rgba.png"
    cv2.imwrite(str(gray), image(channels=1))
    cv2.imwrite(str(rgba), image(channels=4))
    records = [record(gray, [square()]), record(rgba, [square()], image_id=2)]
    assert validate_dataset_dicts(records, "ok", num_classes=4) == records


def test_bad_annotations_are_repaired_or_dropped_with_warnings(good_png, caplog):
    rle = mask_util.encode(np.asfortranarray(np.ones((32, 32), np.uint8)))
    rle["counts"] = rle["counts"].decode()
    annotations = [
        square(),  # 100: fine
        square(segmentation=[[1.0, 2.0, 3.0, 4.0]]),  # 101: fewer than 3 points: dropped
        square(segmentation=[[1.0, 2.0], SQUARE]),  # 102: the bad part removed
        square(segmentation=[[10, 10, 40, 40, 40, 10, 10, 40]]),  # 103: self-intersecting: kept
        square(segmentation=[[-50, -50, 500, -50, 500, 500]]),  # 104: beyond the image: kept
        square(bbox=[math.nan, 1.0, 2.0, 3.0]),  # 105: NaN box replaced by the polygon bounds
        square(bbox=[-5.0, -5.0, 30.0, 30.0]),  # 106: partly outside: kept (clipped later)
        square(segmentation=rle),  # 107: RLE of the wrong size: dropped
        square(segmentation=[]),  # 108: no mask: dropped
    ]
    with caplog.at_level(logging.WARNING, logger="solo_d2"):
        (cleaned,) = validate_dataset_dicts(
            [record(good_png, annotations)], "odd", num_classes=4, mask_format="bitmask"
        )
    ids = [a["id"] for a in cleaned["annotations"]]
    assert ids == [100, 102, 103, 104, 105, 106]
    assert cleaned["annotations"][1]["segmentation"] == [SQUARE]
    assert cleaned["annotations"][4]["bbox"] == [10.0, 10.0, 30.0, 30.0]
    for dropped in (101, 107, 108):
        assert f"image_id 1 ({good_png}), annotation id {dropped}: dropped" in caplog.text
    assert "annotation id 105: bbox [nan, 1.0, 2.0, 3.0] replaced" in caplog.text


def test_rle_masks_need_the_bitmask_format_and_classes_must_exist(good_png):
    rle = mask_util.encode(np.asfortranarray(np.ones((SIZE, SIZE), np.uint8)))
    message = errors_of([record(good_png, [square(segmentation=rle), square(category_id=7)])])
    assert "annotation id 100: segmentation is an RLE mask" in message
    assert "annotation id 101: category_id 7 is outside the model's 4 classes" in message


def coco_json(path, records):
    images, annotations = [], []
    for r in records:
        images.append(
            {
                "id": r["image_id"],
                "file_name": os.path.basename(r["file_name"]),
                "height": r["height"],
                "width": r["width"],
            }
        )
        for a in r["annotations"]:
            annotations.append(
                dict(
                    {k: v for k, v in a.items() if k != "bbox_mode"},
                    image_id=r["image_id"],
                    category_id=1,
                    area=900.0,
                )
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(["a", "b", "c", "d"])]
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )


def train(tmp_path, records, extra=()):
    coco_json(tmp_path / "train.json", records)
    args = [sys.executable, "train_net.py", "--config-file", "configs/SOLO_shapes_quick.yaml"]
    args += ["--coco-dataset", "odd", str(tmp_path / "train.json"), str(tmp_path)]
    args += ["DATASETS.TRAIN", "('odd',)", "DATASETS.TEST", "('odd',)", *TINY_OVERRIDES]
    args += ["MODEL.SOLO.NUM_CLASSES", "4", "SOLVER.MAX_ITER", "6", "SOLVER.IMS_PER_BATCH", "2"]
    args += ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", *extra]
    args += ["DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out")]
    return subprocess.run(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_odd_dataset_trains_and_evaluates_with_warnings(tmp_path):
    cv2.imwrite(str(tmp_path / "0.png"), image(0))
    cv2.imwrite(str(tmp_path / "1.png"), image(1, channels=1))  # grayscale
    cv2.imwrite(str(tmp_path / "2.png"), image(2, channels=4))  # RGBA
    cv2.imwrite(str(tmp_path / "3.png"), image(3))
    data = (tmp_path / "3.png").read_bytes()
    (tmp_path / "3.png").write_bytes(data[: len(data) // 2])  # truncated: header fine, data not
    rng = np.random.default_rng(0)
    crowd = []
    for _ in range(1000):  # an image with 1000 instances
        x, y = rng.uniform(0, 60, 2)
        crowd.append(square(bbox=[x, y, 4.0, 4.0], segmentation=[[x, y, x + 4, y, x + 4, y + 4]]))
    records = [
        record(tmp_path / "0.png", [square(), square(segmentation=[[1.0, 2.0]])], image_id=1),
        record(tmp_path / "1.png", [square(bbox=[math.nan] * 4)], image_id=2, first_id=200),
        record(tmp_path / "2.png", crowd, image_id=3, first_id=1000),
        record(tmp_path / "3.png", [square()], image_id=4, first_id=300),
    ]
    proc = train(tmp_path, records)
    assert proc.returncode == 0, proc.stdout[-3000:]
    log = proc.stdout
    # Detectron2's COCO loader already drops polygons with fewer than 3 points (and says so);
    # validate_dataset_dicts does it for records from any other loader (test above)
    assert "Filtered out 1 instances without valid segmentation" in log
    assert "bbox [nan, nan, nan, nan] replaced by the bounds of its polygons" in log
    assert "3.png cannot be read" in log and "another image is used" in log
    assert "evaluated as a black image" in log
    assert "[solo_d2] odd: mask AP" in log


def test_evaluation_ground_truth_gets_the_training_polygon_repairs(tmp_path, good_png, caplog):
    """COCOEvaluator reads the dataset's JSON itself: a polygon part with fewer than 3 points
    there made pycocotools fail at the end of the evaluation whenever the model predicted
    anything. It is removed (the annotation dropped when nothing is left), as in training."""
    import torch

    from conftest import tiny_cfg
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, Instances
    from solo_d2.data import register_coco_dataset
    from solo_d2.evaluation import build_evaluator

    annotations = [
        square(),
        square(segmentation=[[1.0, 2.0]]),
        square(segmentation=[SQUARE, [3.0]]),
    ]
    coco_json(tmp_path / "gt.json", [record(good_png, annotations, image_id=1)])
    register_coco_dataset("odd_gt", str(tmp_path / "gt.json"), str(good_png.parent))
    DatasetCatalog.get("odd_gt")  # as training / evaluation do: sets the category id mapping
    evaluator = build_evaluator(tiny_cfg(extra=["MODEL.SOLO.NUM_CLASSES", "4"]), "odd_gt")
    gt = evaluator._coco_api.dataset["annotations"]
    assert [a["id"] for a in gt] == [100, 102] and gt[1]["segmentation"] == [SQUARE]
    assert "polygon parts with fewer than 3 finite points removed" in caplog.text
    predicted = Instances((SIZE, SIZE))
    predicted.pred_masks = torch.zeros((1, SIZE, SIZE), dtype=torch.bool)
    predicted.pred_masks[0, 10:40, 10:40] = True
    predicted.pred_boxes = Boxes(torch.tensor([[10.0, 10.0, 40.0, 40.0]]))
    predicted.scores = torch.tensor([0.9])
    predicted.pred_classes = torch.tensor([0])
    evaluator.reset()
    evaluator.process([{"image_id": 1}], [{"instances": predicted}])
    results = evaluator.evaluate()
    # the two squares kept (ids 100, 102), one of them predicted: precision 1 up to recall 0.5
    assert results["segm"]["AP50"] == pytest.approx(50.5, abs=0.1)


def test_an_unusable_dataset_fails_before_training(tmp_path):
    cv2.imwrite(str(tmp_path / "0.png"), image(0))
    (tmp_path / "1.png").write_text("not an image")
    records = [
        record(tmp_path / "0.png", [square()], height=70, image_id=1),
        record(tmp_path / "1.png", [square()], image_id=2, first_id=200),
    ]
    proc = train(tmp_path, records)
    assert proc.returncode != 0
    assert "Starting training" not in proc.stdout
    assert "0.png): height/width are 70x64 in the annotations but the image is 64x64" in proc.stdout
    assert "1.png): file_name cannot be read as an image" in proc.stdout
