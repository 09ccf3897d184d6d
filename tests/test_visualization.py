"""What the pictures show (solo_d2.visualization) and the drawing threshold that the evaluation
chooses from the validation precision (solo_d2.evaluation.drawing_threshold)."""

import json

import numpy as np
import pytest
import torch
from detectron2.structures import Instances
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import square_masks
from solo_d2.evaluation import THRESHOLD_FILE, drawing_threshold
from solo_d2.visualization import find_drawing_threshold, mask_iou_matrix, select_for_drawing


def _instances(boxes, scores, classes, size=(40, 40)):
    result = Instances(size)
    result.pred_masks = square_masks(boxes, *size)
    result.scores = torch.tensor(scores)
    result.pred_classes = torch.tensor(classes)
    return result


def test_mask_iou_matrix():
    masks = square_masks([(0, 0, 4, 4), (2, 0, 6, 4), (20, 20, 24, 24)], 30, 30)
    iou = mask_iou_matrix(masks)
    assert torch.allclose(iou, iou.t()) and torch.allclose(iou.diagonal(), torch.ones(3))
    assert iou[0, 1].item() == pytest.approx(8 / 24) and iou[0, 2] == 0


def test_one_label_per_object_above_the_threshold():
    # 0 and 1: the same object called circle and square (IoU 0.81): only the better one is drawn;
    # 2 overlaps 0 a little (IoU 1/7): drawn; 3 is below the threshold
    instances = _instances(
        [(0, 0, 10, 10), (0, 0, 10, 9), (5, 5, 15, 15), (20, 20, 30, 30)],
        [0.6, 0.7, 0.5, 0.2],
        [0, 1, 2, 3],
    )
    drawn = select_for_drawing(instances, score_threshold=0.3)
    assert drawn.pred_classes.tolist() == [1, 2]
    assert drawn.scores.tolist() == pytest.approx([0.7, 0.5])
    assert len(select_for_drawing(instances, score_threshold=0.9)) == 0


def _coco_eval(tmp_path, predictions):
    """A mask COCOeval of ``predictions`` [(image_id, box, score)] against two objects."""
    size = 32
    gt_boxes = {1: (2, 2, 12, 12), 2: (16, 16, 28, 28)}

    def rle(box):
        mask = square_masks([box], size, size)[0].numpy()
        encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        encoded["counts"] = encoded["counts"].decode("ascii")
        return encoded

    dataset = {
        "images": [
            {"id": i, "height": size, "width": size, "file_name": f"{i}.png"} for i in (1, 2)
        ],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "segmentation": rle(box),
                "area": float((box[2] - box[0]) * (box[3] - box[1])),
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                "iscrowd": 0,
            }
            for i, box in gt_boxes.items()
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(dataset))
    gt = COCO(str(path))
    results = [
        {"image_id": i, "category_id": 1, "segmentation": rle(box), "score": score}
        for i, box, score in predictions
    ]
    evaluation = COCOeval(gt, gt.loadRes(results), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    return evaluation


def test_drawing_threshold_is_the_lowest_score_with_the_precision(tmp_path):
    # scores 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (wrong): precision 1, 1/2, 2/3, 1/2
    evaluation = _coco_eval(
        tmp_path,
        [
            (1, (2, 2, 12, 12), 0.9),
            (1, (20, 0, 30, 8), 0.8),
            (2, (16, 16, 28, 28), 0.7),
            (2, (0, 20, 8, 30), 0.6),
        ],
    )
    found = drawing_threshold(evaluation, min_precision=0.6)
    # COCO's precision at a recall is the best at that recall or more: 2/3 down to 0.7
    assert found["score_threshold"] == pytest.approx(0.7) and found["recall"] == 1.0
    assert found["precision"] == pytest.approx(2 / 3, abs=1e-3)
    strict = drawing_threshold(evaluation, min_precision=0.9)
    assert strict["score_threshold"] == pytest.approx(0.9) and strict["recall"] == 0.5
    never = drawing_threshold(evaluation, min_precision=1.5)
    assert never["rule"].startswith("best F1") and never["score_threshold"] == pytest.approx(0.7)


def test_the_threshold_is_found_next_to_the_checkpoint(tmp_path):
    folder = tmp_path / "inference" / "shapes_val"
    folder.mkdir(parents=True)
    (folder / THRESHOLD_FILE).write_text(
        json.dumps({"score_threshold": 0.44, "precision": 0.7, "recall": 0.4, "rule": "r"})
    )
    weights = str(tmp_path / "model_final.pth")
    found = find_drawing_threshold(weights, ["other", "shapes_val"])
    assert found["score_threshold"] == 0.44 and found["file"].endswith(THRESHOLD_FILE)
    assert find_drawing_threshold(weights, ["other"]) is None
    assert find_drawing_threshold("https://example.com/model.pth", ["shapes_val"]) is None
