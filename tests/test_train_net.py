"""train_net.py and tools/predict.py end to end: CLI, an overfit run, --eval-only, predictions."""

import json
import os
import shutil
import re
import subprocess
import sys

import pytest

from conftest import REPO

import train_net  # noqa: E402
from solo_d2.data import generate_shapes_dataset, register_coco_dataset  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "SOLO_shapes_quick.yaml")
# A handful of 128 px shapes images, trained and evaluated on themselves (an overfit run), with
# the quick configs' thin backbone and lr: mask AP 63-69 for the four heads after 120 iterations
# (2026-12-03; > 30 is asserted, an untrained model scores ~0). No flip and no rotation: the
# images are learned as they are evaluated.
OVERFIT_SETTINGS = {
    "INPUT.MIN_SIZE_TRAIN": "(128,)",
    "INPUT.MAX_SIZE_TRAIN": 128,
    "INPUT.MIN_SIZE_TEST": 128,
    "INPUT.MAX_SIZE_TEST": 128,
    "INPUT.RANDOM_FLIP": "none",
    "INPUT.RANDOM_ROTATION_ANGLES": "[]",
    "SOLVER.IMS_PER_BATCH": 4,
    "SOLVER.BASE_LR": 0.003,
    "SOLVER.MAX_ITER": 120,
    "SOLVER.STEPS": "(100,)",
    "SOLVER.WARMUP_ITERS": 20,
    "TEST.EVAL_PERIOD": 0,
    "SEED": 1,
}
OVERFIT_OPTS = [str(item) for pair in OVERFIT_SETTINGS.items() for item in pair]


def run(args, **kwargs):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def mask_ap(log):
    """The mask AP printed by train_net.py's summary line."""
    found = re.findall(r"\[solo_d2\] .*mask AP ([0-9.]+)", log)
    assert found, log[-3000:]
    return float(found[-1])


def test_help_lists_the_detectron2_arguments():
    proc = run(["train_net.py", "--help"])
    assert proc.returncode == 0
    for flag in (
        "--config-file",
        "--eval-only",
        "--resume",
        "--num-gpus",
        "--num-machines",
        "--machine-rank",
        "--dist-url",
        "--coco-dataset",
    ):
        assert flag in proc.stdout


def test_argument_parsing():
    args = train_net.get_parser().parse_args(
        [
            "--config-file",
            "c.yaml",
            "--eval-only",
            "--num-gpus",
            "2",
            "--resume",
            "--coco-dataset",
            "a",
            "a.json",
            "imgs",
            "MODEL.WEIGHTS",
            "m.pth",
            "SOLVER.MAX_ITER",
            "5",
        ]
    )
    assert args.config_file == "c.yaml" and args.eval_only and args.resume and args.num_gpus == 2
    assert args.coco_dataset == [["a", "a.json", "imgs"]]
    assert args.opts == ["MODEL.WEIGHTS", "m.pth", "SOLVER.MAX_ITER", "5"]


def test_setup_merges_solo_keys_and_overrides(tmp_path):
    args = train_net.get_parser().parse_args(
        ["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path), "MODEL.SOLO.SIGMA", "0.3"]
    )
    cfg = train_net.setup(args)
    assert cfg.MODEL.META_ARCHITECTURE == "SOLO" and cfg.MODEL.SOLO.SIGMA == 0.3
    assert cfg.DATASETS.TRAIN == ("shapes_train",)


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_shapes"))
    json_file, image_dir = generate_shapes_dataset(root, "train", num_images=8, image_size=128)
    return json_file, image_dir


def quick_config(head):
    return os.path.join(REPO, "configs", f"{head}_shapes_quick.yaml")


def tiny_dataset_args(json_file, image_dir, train=True):
    args = ["--coco-dataset", "tiny", json_file, image_dir, "DATASETS.TEST", '("tiny",)']
    return args + (["DATASETS.TRAIN", '("tiny",)'] if train else [])


@pytest.fixture(scope="module", params=["SOLO", "Decoupled_SOLO", "Decoupled_SOLO_Light", "SOLOv2"])
def overfit_run(request, tiny_shapes, tmp_path_factory):
    """Train a head on 8 images for 120 iterations, evaluating on the same images at the end."""
    head = request.param
    output = str(tmp_path_factory.mktemp(f"overfit_{head}"))
    proc = run(
        ["train_net.py", "--config-file", quick_config(head), *tiny_dataset_args(*tiny_shapes)]
        + ["OUTPUT_DIR", output, *OVERFIT_OPTS]
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    return head, output, proc.stdout


@pytest.mark.slow
def test_overfit_reaches_high_mask_ap(overfit_run):
    head, output, log = overfit_run
    assert "eta:" in log and "loss_ins" in log  # progress with ETA from Detectron2's writers
    assert mask_ap(log) > 30.0, head
    assert os.path.isfile(os.path.join(output, "model_final.pth"))
    assert os.path.isfile(os.path.join(output, "metrics.json"))


@pytest.mark.slow
def test_eval_only_reproduces_the_final_evaluation(overfit_run, tiny_shapes):
    head, output, log = overfit_run
    proc = run(
        ["train_net.py", "--config-file", quick_config(head), "--eval-only"]
        + tiny_dataset_args(*tiny_shapes, train=False)
        + ["OUTPUT_DIR", os.path.join(output, "eval")]
        + ["MODEL.WEIGHTS", os.path.join(output, "model_final.pth"), *OVERFIT_OPTS]
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert mask_ap(proc.stdout) == pytest.approx(mask_ap(log), abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("overfit_run", ["SOLO", "SOLOv2"], indirect=True)
def test_predict_tool_writes_pictures_and_json(overfit_run, tiny_shapes, tmp_path):
    """Also: an unreadable file among the inputs is skipped with a message naming it. For the
    two mask paradigms (S^2 mask channels, dynamic kernels): the tool's own code does not
    depend on the head, and --eval-only above runs every head's trained checkpoint."""
    head, output, _ = overfit_run
    _, image_dir = tiny_shapes
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("000000.png", "000001.png"):
        shutil.copy(os.path.join(image_dir, name), inputs)
    good = (inputs / "000001.png").read_bytes()
    (inputs / "000002_truncated.png").write_bytes(good[: len(good) // 3])
    (inputs / "000003_not_an_image.png").write_text("not a PNG")
    proc = run(
        ["tools/predict.py", "--config-file", quick_config(head), "--input", str(inputs)]
        + ["--output", str(tmp_path / "vis")]
        + ["--json", str(tmp_path / "preds.json")]
        + ["MODEL.WEIGHTS", os.path.join(output, "model_final.pth"), *OVERFIT_OPTS]
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    for name in ("000002_truncated.png", "000003_not_an_image.png"):
        assert re.search(rf"skipping .*{name}: not a readable image", proc.stdout), name
    assert sorted(os.listdir(tmp_path / "vis")) == ["000000.png", "000001.png"]
    results = json.loads((tmp_path / "preds.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 2, 3, 4}
    assert {os.path.basename(r["file_name"]) for r in results} <= {"000000.png", "000001.png"}
    assert all(set(r) >= {"file_name", "bbox", "score", "segmentation"} for r in results)


def test_eval_only_with_missing_weights_is_a_clear_error(tmp_path):
    proc = run(
        [
            "train_net.py",
            "--config-file",
            CONFIG,
            "--eval-only",
            "MODEL.WEIGHTS",
            str(tmp_path / "nope.pth"),
            "OUTPUT_DIR",
            str(tmp_path),
        ]
    )
    assert proc.returncode != 0
    assert re.search(r"MODEL.WEIGHTS file '.*nope.pth' does not exist", proc.stdout)


def test_class_count_mismatch_is_a_clear_error(tiny_shapes, tmp_path):
    json_file, image_dir = tiny_shapes
    proc = run(
        [
            "train_net.py",
            "--config-file",
            CONFIG,
            "--coco-dataset",
            "tiny3",
            json_file,
            image_dir,
            "DATASETS.TRAIN",
            '("tiny3",)',
            "MODEL.SOLO.NUM_CLASSES",
            "3",
            "OUTPUT_DIR",
            str(tmp_path),
        ]
    )
    assert proc.returncode != 0
    assert "dataset 'tiny3' has 4 classes but MODEL.SOLO.NUM_CLASSES is 3" in proc.stdout


def test_register_coco_dataset_errors(tiny_shapes, tmp_path):
    json_file, image_dir = tiny_shapes
    with pytest.raises(FileNotFoundError, match="missing.json"):
        register_coco_dataset("x1", str(tmp_path / "missing.json"), image_dir)
    with pytest.raises(FileNotFoundError, match="no_images"):
        register_coco_dataset("x2", json_file, str(tmp_path / "no_images"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        register_coco_dataset("x3", str(bad), image_dir)
    assert register_coco_dataset("x4", json_file, image_dir) == [
        "circle",
        "square",
        "triangle",
        "star",
    ]
    with pytest.raises(ValueError, match="already registered"):
        register_coco_dataset("x4", json_file, image_dir)
