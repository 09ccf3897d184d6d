"""The paths that matter on a GPU, on every device this machine has.

Each test runs on the CPU and, where CUDA is available, on CUDA (``device`` fixture of
conftest: the CUDA cases carry the ``cuda`` mark and are skipped without CUDA; ``make
gpu-check`` runs them with ``-m cuda``). A CUDA result is compared with the CPU one: targets
equal, losses and detections within float tolerance. Two-process NCCL training runs when two
GPUs exist.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import DEVICES, REPO, make_input, tiny_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from solo_d2.data import SHAPES_CLASSES
from solo_d2.export.verify import match_detections
from solo_d2.modeling.losses import category_focal_loss, mask_loss
from solo_d2.modeling.targets import build_solo_targets, build_solov2_targets

TARGET_SETTINGS = dict(
    num_grids=(12, 10, 8, 6, 4),
    scale_ranges=((1, 24), (12, 48), (24, 72), (48, 96), (72, 2048)),
    strides=(8, 8, 16, 32, 32),
    sigma=0.2,
    num_classes=5,
)


def _instances(seed, count=12, size=(96, 128)):
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros((count, *size), dtype=torch.bool)
    boxes = torch.zeros((count, 4))
    for k in range(count):
        y0, x0 = torch.randint(0, size[0] - 8, (1,), generator=generator).item(), 0
        x0 = torch.randint(0, size[1] - 8, (1,), generator=generator).item()
        h = torch.randint(3, size[0] - y0 + 1, (1,), generator=generator).item()
        w = torch.randint(3, size[1] - x0 + 1, (1,), generator=generator).item()
        masks[k, y0 : y0 + h, x0 : x0 + w] = True
        boxes[k] = torch.tensor([x0, y0, x0 + w, y0 + h])
    classes = torch.randint(0, 5, (count,), generator=generator)
    return boxes, classes, masks, size


@pytest.mark.parametrize("builder", [build_solo_targets, build_solov2_targets])
def test_targets_on_the_device_equal_the_cpu_targets(device, builder):
    boxes, classes, masks, size = _instances(0)
    expected = builder(boxes, classes, masks, size, **TARGET_SETTINGS)
    got = builder(boxes.to(device), classes.to(device), masks.to(device), size, **TARGET_SETTINGS)
    for e, g in zip(expected, got):
        assert g.cate.device.type == torch.device(device).type
        for field in ("cate", "pos", "gt", "masks"):
            assert torch.equal(getattr(e, field), getattr(g, field).cpu()), field


def test_losses_on_the_device_equal_the_cpu_losses(device):
    generator = torch.Generator().manual_seed(0)
    probs = [torch.rand(5, 24, 32, generator=generator), torch.rand(0, 12, 16)]
    targets = [torch.rand(5, 24, 32, generator=generator) > 0.5, torch.zeros(0, 12, 16).bool()]
    logits = torch.randn(200, 4, generator=generator)
    labels = torch.randint(0, 5, (200,), generator=generator)
    expected = (mask_loss(probs, targets), category_focal_loss(logits, labels, 4, 0.25, 2.0))
    got = (
        mask_loss([p.to(device) for p in probs], [t.to(device) for t in targets]),
        category_focal_loss(logits.to(device), labels.to(device), 4, 0.25, 2.0),
    )
    for e, g in zip(expected, got):
        assert torch.allclose(g.cpu(), e, rtol=1e-5, atol=1e-6)


def _detecting_model(device, head="SOLO"):
    cfg = tiny_cfg(extra=["MODEL.SOLO.HEAD", head, "MODEL.SOLO.SCORE_THRESH_TEST", "0.1"])
    cfg.MODEL.DEVICE = device
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.head.cate_pred.bias.fill_(-1.0)  # random weights detect nothing at p = 0.01
    return model


def _detections(model, image):
    with torch.no_grad():
        instances = model([{"image": image}])[0]["instances"].to("cpu")
    return [instances.pred_masks, instances.scores, instances.pred_classes, instances.pred_boxes]


@pytest.mark.parametrize("head", ["SOLO", "SOLOv2"])
def test_inference_on_the_device_gives_the_cpu_detections(device, head):
    image = make_input([(4, 4, 30, 30)], [0], height=96, width=128, seed=4)["image"]
    cpu_model = _detecting_model("cpu", head)
    model = _detecting_model(device, head)
    model.load_state_dict(cpu_model.state_dict())
    expected, got = _detections(cpu_model, image), _detections(model, image)
    assert len(expected[1]) >= 3
    report = match_detections(
        [*expected[:3], expected[3].tensor], [*got[:3], got[3].tensor], score_tol=1e-3
    )
    assert report["ok"], report


def _batches():
    batch = [
        make_input([(4, 4, 30, 30), (30, 20, 60, 50)], [0, 2], seed=1),
        make_input([(10, 8, 40, 44)], [1], seed=2),
    ]
    while True:
        yield batch


@pytest.mark.parametrize("precision", [None, "bfloat16", "float16"])
def test_training_steps_on_the_device(device, precision):
    """Five training steps (SGD) of the tiny SOLOv2 model in float32 and mixed precision:
    finite losses that fall, float32 weights, on the device."""
    from solo_d2.engine import amp
    from solo_d2.engine.optim import build_optimizer

    if precision == "float16" and device == "cpu":
        pytest.skip("float16 mixed precision is CUDA only (refused on the CPU: test_amp.py)")
    cfg = tiny_cfg(extra=["MODEL.SOLO.HEAD", "SOLOv2", "SOLVER.BASE_LR", "0.01"])
    cfg.MODEL.DEVICE = device
    cfg.SOLVER.AMP.ENABLED = precision is not None
    cfg.SOLVER.AMP.PRECISION = precision or "float16"
    if precision == "bfloat16" and device == "cpu" and not amp.cpu_has_native_bfloat16():
        pytest.skip("this CPU has no bfloat16 instructions (training would stay in float32)")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    trainer = amp.build_step_trainer(cfg, model, _batches(), build_optimizer(cfg, model))
    losses = []
    with EventStorage(0) as storage:
        trainer.storage = storage
        for trainer.iter in range(5):
            trainer.run_step()
            storage.step()
            losses.append(storage.history("total_loss").latest())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert all(p.dtype == torch.float32 and p.device.type == device for p in model.parameters())


def test_a_model_on_the_device_exports_and_equals_its_eager_outputs(device, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from solo_d2.export import export_onnx

    model = _detecting_model(device, "SOLOv2")
    image = make_input([(4, 4, 30, 30)], [0], height=96, width=128, seed=4)["image"].float()
    expected = _detections(model, image)
    path = export_onnx(model, str(tmp_path / "model.onnx"), image)
    assert next(model.parameters()).device.type == device  # the model itself stays there
    got = ort.InferenceSession(path).run(None, {"image": image.numpy()})
    assert len(expected[1]) >= 3
    report = match_detections([*expected[:3], expected[3].tensor], got, score_tol=1e-3)
    assert report["ok"], report


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_cuda_processes_train_with_nccl(tmp_path):
    """tests/distributed_driver.py with 2 processes on 2 GPUs (NCCL): parameters stay equal."""
    proc = subprocess.run(
        [sys.executable, "tests/distributed_driver.py", "--num-gpus", "2"]
        + ["--data", str(tmp_path / "data"), "--output", str(tmp_path / "out"), "--heads", "SOLOv2"]
        + ["MODEL.DEVICE", "cuda", "MODEL.SOLO.NUM_CLASSES", str(len(SHAPES_CLASSES))],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    with open(tmp_path / "out" / "SOLOv2" / "report.json") as f:
        report = json.load(f)
    assert report["world_size"] == 2 and all(step["identical"] for step in report["steps"])


def test_cuda_cases_are_collected_and_skipped_without_cuda():
    """``pytest -m cuda`` (make gpu-check) selects the CUDA cases of this module; on a machine
    without CUDA every one of them is skipped, none fails or passes."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-rs", "tests/test_devices.py"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    summary = proc.stdout.strip().splitlines()[-1]
    if torch.cuda.is_available():
        assert "failed" not in summary and "passed" in summary, proc.stdout[-3000:]
        return
    assert proc.returncode == 0 and "passed" not in summary, proc.stdout[-3000:]
    skipped = int(summary.split(" skipped")[0].split()[-1])
    assert skipped >= 10 and "CUDA is not available" in proc.stdout, proc.stdout[-3000:]
    assert "cpu" in DEVICES


def test_gpu_check_without_cuda_says_so_and_runs_nothing(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: make gpu-check runs for real")
    proc = subprocess.run(
        [sys.executable, "tools/gpu_check.py", "--output", str(tmp_path / "out")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_gpu_check_reads_pytest_junit_counts(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", f"{REPO}/tools/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    junit = tmp_path / "tests.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="2" tests="9">'
        "</testsuite></testsuites>"
    )
    assert gpu_check.test_counts(junit) == {"tests": 9, "failures": 1, "errors": 0, "skipped": 2}
