"""Multi-process training and evaluation on the CPU (gloo), through Detectron2's engine.

Each test starts real processes: solo_d2.engine.launch (train_net.py --num-gpus 2) and torchrun.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_OVERRIDES
from solo_d2.data import SHAPES_CLASSES, generate_shapes_dataset

HEADS = ["SOLO", "DecoupledSOLO", "DecoupledSOLOLight", "SOLOv2"]
CONFIG = os.path.join(REPO, "configs", "SOLO_shapes_quick.yaml")
SMALL = TINY_OVERRIDES + ["MODEL.SOLO.NUM_CLASSES", str(len(SHAPES_CLASSES))]
SMALL += [
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "DATALOADER.NUM_WORKERS",
    "0",
]


def run(args, **kwargs):
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
        **kwargs,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """4 iterations of every head in 2 gloo processes (tests/distributed_driver.py)."""
    root = tmp_path_factory.mktemp("ddp")
    run(
        ["tests/distributed_driver.py", "--num-gpus", "2", "--data", str(root / "data")]
        + [
            "--output",
            str(root / "out"),
            "--heads",
            ",".join(HEADS),
            "MODEL.SOLO.MASK_PRIOR_PROB",
            "0.5",
        ]
    )
    return root


@pytest.mark.parametrize("head", HEADS)
def test_parameters_stay_identical_while_one_process_has_no_gt(two_process_runs, head):
    """DDP with find_unused_parameters=False: every parameter gets a gradient on every process,
    also when its image has no gt (one of the two images of the dataset has none)."""
    with open(two_process_runs / "out" / head / "report.json") as f:
        report = json.load(f)
    assert report["world_size"] == 2 and len(report["steps"]) == 4
    assert all(step["identical"] for step in report["steps"])
    assert all(sorted(step["gt_per_process"])[0] == 0 for step in report["steps"])
    assert all(sorted(step["gt_per_process"])[1] > 0 for step in report["steps"])
    assert os.path.isfile(two_process_runs / "out" / head / "model_final.pth")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_shapes_dataset(
        str(tmp_path_factory.mktemp("val")), "val", num_images=3, image_size=64
    )


def evaluate(checkpoint, dataset, output, num_processes):
    json_file, image_dir = dataset
    log = run(
        ["train_net.py", "--config-file", CONFIG, "--eval-only", "--num-gpus", str(num_processes)]
        + ["--coco-dataset", "val3", json_file, image_dir, "DATASETS.TEST", "('val3',)"]
        + SMALL
        + ["MODEL.SOLO.SCORE_THRESH_TEST", "0.0", "MODEL.SOLO.UPDATE_THRESH_TEST", "0.0"]
        + ["MODEL.WEIGHTS", str(checkpoint), "OUTPUT_DIR", str(output)]
    )
    predictions = torch.load(output / "inference" / "val3" / "instances_predictions.pth")
    return re.findall(r"\[solo_d2\] val3: (.*)", log), predictions


def test_evaluation_in_two_processes_gathers_every_prediction(two_process_runs, dataset, tmp_path):
    checkpoint = two_process_runs / "out" / "SOLO" / "model_final.pth"
    one_line, one = evaluate(checkpoint, dataset, tmp_path / "one", 1)
    two_line, two = evaluate(checkpoint, dataset, tmp_path / "two", 2)
    assert one_line and one_line == two_line  # same mask AP and box AP
    assert sorted(p["image_id"] for p in two) == sorted(p["image_id"] for p in one)
    assert len(two) == 3 and sum(len(p["instances"]) for p in two) > 0
    by_image = {p["image_id"]: p["instances"] for p in one}
    for p in two:
        assert [i["score"] for i in p["instances"]] == pytest.approx(
            [i["score"] for i in by_image[p["image_id"]]]
        )


def test_a_two_process_run_resumes_in_one_process(two_process_runs, dataset, tmp_path):
    output = tmp_path / "resumed"
    shutil.copytree(two_process_runs / "out" / "SOLO", output)
    json_file, image_dir = dataset
    log = run(
        ["train_net.py", "--config-file", CONFIG, "--resume", "--num-gpus", "1"]
        + ["--coco-dataset", "val3", json_file, image_dir]
        + ["DATASETS.TRAIN", "('val3',)", "DATASETS.TEST", "()"]
        + SMALL
        + ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6", "OUTPUT_DIR", str(output)]
    )
    assert "Starting training from iteration 4" in log  # the 2-process run ended after 4
    final = torch.load(output / "model_final.pth", weights_only=True)
    assert final["iteration"] == 5


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_entry(dataset, tmp_path):
    json_file, image_dir = dataset
    log = run(
        ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
        + ["train_net.py", "--config-file", CONFIG]
        + ["--coco-dataset", "val3", json_file, image_dir]
        + ["DATASETS.TRAIN", "('val3',)", "DATASETS.TEST", "('val3',)"]
        + SMALL
        + ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path)]
    )
    assert "World size: 2" in log
    assert "[solo_d2] val3: mask AP" in log  # evaluated by COCOEvaluator over both processes
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_float16_amp_on_the_cpu_fails_before_training_with_a_clear_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", CONFIG, "SOLVER.AMP.ENABLED", "True"]
        + ["SOLVER.AMP.PRECISION", "float16", "OUTPUT_DIR", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.returncode != 0
    assert "SOLVER.AMP.PRECISION float16 needs CUDA" in proc.stdout
    assert "use SOLVER.AMP.PRECISION bfloat16 on the CPU" in proc.stdout


def test_cpu_processes_share_the_cores(monkeypatch):
    """N CPU processes on one machine get cores // N torch threads each (at least 1), unless
    OMP_NUM_THREADS is set."""
    from solo_d2.engine.launch import share_cpu_threads

    before = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert share_cpu_threads(2) == 4 and torch.get_num_threads() == 4
        assert share_cpu_threads(16) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        assert share_cpu_threads(2) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
