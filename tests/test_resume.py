"""Exact resume and crash safety of training checkpoints."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY_OVERRIDES, tiny_cfg
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng
from solo_d2.checkpoint import load_weights_file
from solo_d2.data import SHAPES_CLASSES, generate_shapes_dataset, register_coco_dataset
from solo_d2.engine import Trainer


class LossRecorder(HookBase):
    def __init__(self):
        self.losses = {}

    def after_step(self):
        storage = self.trainer.storage
        self.losses[self.trainer.iter] = {
            k: storage.history(k).latest() for k in ("loss_ins", "loss_cate")
        }


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory):
    json_file, image_dir = generate_shapes_dataset(
        str(tmp_path_factory.mktemp("resume")), "train", num_images=6, image_size=64
    )
    if "resume_train" not in __import__("detectron2").data.DatasetCatalog.list():
        register_coco_dataset("resume_train", json_file, image_dir)
    return json_file, image_dir


def train(head, output, resume):
    cfg = tiny_cfg(
        extra=["MODEL.SOLO.HEAD", head, "MODEL.SOLO.NUM_CLASSES", str(len(SHAPES_CLASSES))]
        + ["MODEL.SOLO.KERNEL_CHANNELS", "32", "MODEL.SOLO.MASK_FEATURE_CHANNELS", "32"]
        + ["DATASETS.TRAIN", "('resume_train',)", "DATASETS.TEST", "()", "SEED", "3"]
        + ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3"]
        + ["INPUT.MIN_SIZE_TRAIN", "(48, 64)", "INPUT.RANDOM_FLIP", "horizontal"]
        + ["DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(output)]
    )
    seed_all_rng(cfg.SEED)  # what train_net.py's default_setup does
    trainer = Trainer(cfg)
    recorder = LossRecorder()
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return recorder.losses, trainer.model.state_dict()


@pytest.mark.parametrize("head", ["SOLO", "SOLOv2"])
def test_n_iterations_equal_half_then_resume_half(head, resume_data, tmp_path):
    """Same images, augmentations (random flips and sizes), losses and weights, bit for bit."""
    losses, weights = train(head, tmp_path / "continuous", resume=False)
    assert os.path.isfile(tmp_path / "continuous" / "model_0000002.pth")
    # The checkpoint (weights, optimizer, scheduler, random states) needs no full unpickling.
    torch.load(tmp_path / "continuous" / "model_0000002.pth", weights_only=True)
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copy(tmp_path / "continuous" / "model_0000002.pth", interrupted)
    (interrupted / "last_checkpoint").write_text("model_0000002.pth")
    resumed_losses, resumed_weights = train(head, interrupted, resume=True)
    assert sorted(resumed_losses) == [3, 4, 5]
    for iteration, values in resumed_losses.items():
        assert values == losses[iteration], iteration
    for key, value in weights.items():
        assert torch.equal(resumed_weights[key], value), key


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from solo_d2.engine.hooks import RNGStateHook

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    torch.save({"rng": RNGStateHook().state_dict()}, tmp_path / "state.pth")
    expected = (random.random(), np.random.randn(3), torch.rand(3))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    RNGStateHook().load_state_dict(torch.load(tmp_path / "state.pth", weights_only=True)["rng"])
    actual = (random.random(), np.random.randn(3), torch.rand(3))
    assert actual[0] == expected[0]
    np.testing.assert_array_equal(actual[1], expected[1])
    assert torch.equal(actual[2], expected[2])


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    """A save that fails part-way (a killed process, a full disk) leaves the previous
    checkpoint and the last_checkpoint tag intact, and no partial file under the real name."""
    from detectron2.modeling import build_model

    from solo_d2 import SOLOCheckpointer

    model = build_model(tiny_cfg())
    checkpointer = SOLOCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0001", iteration=1)
    before = (tmp_path / "model_0001.pth").read_bytes()

    def interrupted_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0001", iteration=2)
    monkeypatch.undo()
    assert (tmp_path / "model_0001.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0001.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0001.pth"]


def test_a_killed_run_resumes(resume_data, tmp_path):
    json_file, image_dir = resume_data
    command = [sys.executable, "train_net.py", "--config-file", tiny_cfg.__defaults__[0]]
    command += ["--coco-dataset", "killed", json_file, image_dir]
    args = ["DATASETS.TRAIN", "('killed',)"]
    args += TINY_OVERRIDES + ["MODEL.SOLO.NUM_CLASSES", str(len(SHAPES_CLASSES))]
    args += ["DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(64,)"]
    args += ["DATALOADER.NUM_WORKERS", "0", "SOLVER.CHECKPOINT_PERIOD", "1"]
    args += ["OUTPUT_DIR", str(tmp_path)]
    proc = subprocess.Popen(
        command + args + ["SOLVER.MAX_ITER", "1000"], cwd=REPO, stdout=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (tmp_path / "model_0000003.pth").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # wherever it is: mid-iteration or mid-save
    proc.wait()
    tagged = (tmp_path / "last_checkpoint").read_text()
    state = load_weights_file(str(tmp_path / tagged))  # not truncated
    last = state["iteration"]
    assert last >= 2  # the tag may still name the checkpoint before model_0000003
    log = subprocess.run(
        command + ["--resume"] + args + ["SOLVER.MAX_ITER", str(last + 3)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ).stdout
    assert f"Starting training from iteration {last + 1}" in log, log[-2000:]
    assert load_weights_file(str(tmp_path / "model_final.pth"))["iteration"] == last + 2
