"""Guards of tools/benchmark.py and benchmarks: what it compares is equivalent, and it
runs end to end.

No timing is asserted here; the numbers are in docs/BENCHMARKS.md.
"""

import ast
import importlib.util
import json
import os
import pkgutil
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, make_input, tiny_cfg
from detectron2.modeling import build_model
import benchmarks as benchmark
from benchmarks.dense_baseline import assert_same_targets, build_dense_targets, cell_of
from solo_d2.modeling.targets import build_solo_targets, grid_cell

# The CLI is a script, not part of the package: loaded from its file.
spec = importlib.util.spec_from_file_location(
    "benchmark_cli", os.path.join(REPO, "tools", "benchmark.py")
)
benchmark_cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark_cli)


def _package_imports(package_dir, package):
    """{module: modules of ``package`` it imports} from the sources (static: TYPE_CHECKING and
    function-level imports count too)."""
    graph = {}
    for info in pkgutil.walk_packages([package_dir], prefix=f"{package}."):
        path = os.path.join(REPO, *info.name.split("."))
        path = os.path.join(path, "__init__.py") if info.ispkg else path + ".py"
        parts = info.name.split(".") if info.ispkg else info.name.split(".")[:-1]
        imported = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom):
                base = parts[: len(parts) - node.level + 1] if node.level else []
                name = ".".join(base + ([node.module] if node.module else []))
                imported.add(name)
                imported.update(f"{name}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[info.name] = {m for m in imported if m.startswith(f"{package}.")}
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_benchmark_lives_outside_the_package_and_has_no_import_cycle():
    """The benchmark is the repository's top-level ``benchmarks`` package, not shipped in
    solo_d2, and its modules import each other one way only (the package ``__init__`` files,
    which gather their modules, aside)."""
    assert not os.path.exists(os.path.join(REPO, "solo_d2", "benchmark"))
    graph = _package_imports(os.path.join(REPO, "benchmarks"), "benchmarks")
    assert {"benchmarks.measure", "benchmarks.registry", "benchmarks.sections.export"} <= set(graph)
    modules = {m: deps - {"benchmarks", "benchmarks.sections"} for m, deps in graph.items()}

    def reaches(start, goal, seen=()):
        return any(
            d == goal or (d not in seen and reaches(d, goal, (*seen, d))) for d in modules[start]
        )

    cycles = [
        m for m in modules if m not in ("benchmarks", "benchmarks.sections") and reaches(m, m)
    ]
    assert not cycles, f"import cycles through {cycles}"


SMALL = dict(
    num_grids=(12, 10, 8, 6, 4),
    scale_ranges=((1, 24), (12, 48), (24, 72), (48, 96), (72, 2048)),
    strides=(8, 8, 16, 32, 32),
    num_classes=5,
)


def _padded_case(seed, count, image=(128, 96), padded=(128, 128)):
    """Random instances on a 128x96 image, zero-padded to 128x128."""
    rng = np.random.default_rng(seed)
    _, masks, boxes, _ = benchmark.random_instances(rng, count, *image)
    classes = torch.from_numpy(rng.integers(0, SMALL["num_classes"], count)).long()
    padded_masks = torch.zeros((count, *padded), dtype=torch.bool)
    padded_masks[:, : image[0], : image[1]] = masks
    return boxes, classes, padded_masks, padded


@pytest.mark.parametrize("seed, count", [(0, 1), (1, 6), (2, 15), (3, 30)])
def test_dense_baseline_equals_build_solo_targets(seed, count):
    boxes, classes, masks, padded = _padded_case(seed, count)
    dense = build_dense_targets(boxes, classes, masks, padded, **SMALL)
    sparse = build_solo_targets(boxes, classes, masks, padded, **SMALL)
    assert sum(len(level.pos) for level in sparse) > 0
    assert_same_targets(dense, sparse)


def test_dense_baseline_on_default_grids_and_without_instances():
    boxes, classes, masks, padded = _padded_case(4, 8, image=(160, 224), padded=(160, 224))
    classes = classes % 80
    assert_same_targets(
        build_dense_targets(boxes, classes, masks, padded),
        build_solo_targets(boxes, classes, masks, padded),
    )
    empty = torch.zeros((0, 64, 64), dtype=torch.bool)
    dense = build_dense_targets(torch.zeros((0, 4)), torch.zeros(0).long(), empty, (64, 64))
    assert all(not level.positive.any() for level in dense)
    assert_same_targets(
        dense, build_solo_targets(torch.zeros((0, 4)), torch.zeros(0).long(), empty, (64, 64))
    )


def test_mismatch_is_detected():
    boxes, classes, masks, padded = _padded_case(5, 6)
    dense = build_dense_targets(boxes, classes, masks, padded, **SMALL)
    sparse = build_solo_targets(boxes, classes, masks, padded, **SMALL)
    level = next(k for k, t in enumerate(sparse) if len(t.pos))
    dense[level].masks[sparse[level].pos[0]] ^= 1
    with pytest.raises(AssertionError, match="mask targets"):
        assert_same_targets(dense, sparse)


def test_cell_rule_matches_grid_cell():
    """The baseline's scalar float32 cell rule is solo_d2's vectorised grid_cell, bit for bit."""
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.uniform(-50, 1300, 3000).astype(np.float32),
            np.arange(0, 1216, 0.5, dtype=np.float32),  # many exact cell boundaries
        ]
    )
    for size, num_grid in [(800, 40), (1216, 36), (128, 12), (1216, 24), (96, 5)]:
        expected = grid_cell(torch.from_numpy(values), size, num_grid).tolist()
        assert [cell_of(v, size, num_grid) for v in values] == expected


def test_all_channel_loss_equals_positive_only_loss():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    positive_only = build_model(cfg).train()
    all_channel = benchmark.AllChannelSOLO(cfg).train()
    all_channel.load_state_dict(positive_only.state_dict())
    batch = [
        make_input([[4, 6, 30, 40], [20, 10, 60, 50], [40, 30, 78, 62]], [0, 1, 2], seed=1),
        make_input([], [], seed=2),
        make_input([[10, 12, 26, 28]], [2], seed=3),
    ]
    expected, got = positive_only(batch), all_channel(batch)
    assert expected["loss_ins"].item() > 0
    for key in ("loss_ins", "loss_cate"):
        assert torch.allclose(got[key], expected[key], rtol=1e-5, atol=1e-6), key
    sum(got.values()).backward()
    assert all(p.grad is not None for p in all_channel.parameters() if p.requires_grad)


def test_inference_load_sets_the_candidate_count():
    settings = benchmark.Settings(device="cpu", threads=1, quick=True, infer_size=(96, 128))
    model, inputs = benchmark.prepare_infer(settings, "SOLO")
    load = benchmark.add_inference_load(model, inputs, 40)
    assert load["candidates"] == 40
    assert 0 < load["mask_foreground_fraction"] < 1


@pytest.mark.slow
def test_cli_quick_run_writes_json_and_png(tmp_path):
    """Every default section end to end, timing only (memory: the test below)."""
    threads = torch.get_num_threads()
    try:
        results = benchmark_cli.main(
            ["--quick", "--device", "cpu", "--threads", "1", "--output", str(tmp_path)]
            + ["--models", "SOLO", "MaskRCNN", "--no-memory"]
        )
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "benchmarks.png").stat().st_size > 0
    assert "| target |" in (tmp_path / "bench.md").read_text()
    assert set(saved) >= {"machine", "settings", "targets", "maskhead", "train", "infer", "checks"}
    assert saved["machine"]["threads"] == 1 and saved["settings"]["memory"] is False
    verdicts = [c["verdict"] for c in saved["checks"]]
    assert verdicts[2:] == ["n/a", "n/a"]  # SOLOv2 not run; memory not measured
    assert all(v in ("PASS", "MISS") for v in verdicts[:2])
    rows = saved["train"] + saved["infer"] + saved["maskhead"]
    assert all(r["ms"] > 0 for r in saved["train"] + saved["infer"])
    assert all(r["peak_mb"] is None for r in rows)  # not measured with --no-memory
    assert {r["model"] for r in saved["infer"]} == {"SOLO", "MaskRCNN"}
    assert all(r["instances"] > 0 for r in saved["infer"])
    assert results["checks"] == saved["checks"]


@pytest.mark.slow
def test_memory_cases_run_once_each_in_a_fresh_process_and_fill_every_row():
    """The memory plan measures each distinct case once, in a process started by the CLI, and
    writes the result into every row that asked for it."""
    from benchmarks.measure import MemoryPlan
    from benchmarks.settings import Settings

    settings = Settings(device="cpu", threads=1, quick=True, warmup=0, repeats=1)
    command = [sys.executable, os.path.join(REPO, "tools", "benchmark.py")]
    plan = MemoryPlan(settings, command, jobs=2)
    rows = [{}, {}, {}]
    plan.request(rows[0], kind="targets", variant="solo_d2", instances=5)
    plan.request(rows[1], kind="targets", variant="solo_d2", instances=5)  # the same case
    plan.request(rows[2], "unknown_", kind="no such kind")
    plan.run()
    assert rows[0]["peak_mb"] == rows[1]["peak_mb"] and rows[0]["base_mb"] == rows[1]["base_mb"]
    assert rows[0]["peak_mb"] >= rows[0]["base_mb"] > 0
    assert rows[2]["unknown_peak_mb"] is None  # a failed case is reported, not invented


def test_accuracy_run_fits_the_schedule_to_the_budget_and_records_the_curve(tmp_path, monkeypatch):
    """Each model of the equal-time comparison trains with SOLVER.TIME_BUDGET_S and is
    evaluated at equal fractions of its fitted schedule, the last time at its end. The budget's
    clock is simulated (0.5 s per iteration), so the plan is the same on any machine."""
    from conftest import TINY_OVERRIDES
    from detectron2.data import DatasetCatalog
    from detectron2.engine import SimpleTrainer

    from benchmarks.accuracy_run import accuracy_config, train_for_budget
    from solo_d2.data import generate_shapes_dataset, register_coco_dataset
    from solo_d2.engine import time_budget

    json_file, image_dir = generate_shapes_dataset(str(tmp_path), "train", 4, image_size=64)
    if "accuracy_tiny" not in DatasetCatalog.list():
        register_coco_dataset("accuracy_tiny", json_file, image_dir)

    class Clock:
        now = 0.0

        def perf_counter(self):
            return self.now

    clock = Clock()
    monkeypatch.setattr(time_budget, "time", clock)
    run_step = SimpleTrainer.run_step

    def timed_step(trainer):
        clock.now += 0.5
        run_step(trainer)

    monkeypatch.setattr(SimpleTrainer, "run_step", timed_step)
    cfg = accuracy_config(
        "SOLOv2",
        TINY_OVERRIDES
        + ["DATASETS.TRAIN", "('accuracy_tiny',)", "DATASETS.TEST", "('accuracy_tiny',)"]
        + ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "SOLVER.MAX_ITER", "40"]
        + ["SOLVER.STEPS", "(35,)", "SOLVER.WARMUP_ITERS", "0", "OUTPUT_DIR", str(tmp_path)]
        + ["MODEL.SOLO.NUM_CLASSES", "4", "SOLVER.TIME_BUDGET_MEASURE_ITERS", "4"],
    )
    result = train_for_budget(cfg, budget=20, evaluations=2)
    assert result["iterations"] == 40  # 20 s at 0.5 s per iteration (evaluations take none)
    # the half-way evaluation ran at the first plan's half (38 iterations, an evaluation assumed
    # to cost 0.5 s), then measured free: the plan grew to 40
    assert [point["iteration"] for point in result["curve"]] == [19, 40]
    mask_ap = result["curve"][-1]["mask_ap"]  # the COCOEvaluator's (NaN: no detection yet)
    assert mask_ap is not None and (mask_ap != mask_ap or 0.0 <= mask_ap <= 100.0)


def test_mask_target_ceiling_is_exact_at_stride_1_and_rounds_odd_edges_at_stride_2():
    """benchmarks.mask_target_ceiling: a perfect prediction of a stride-1 target draws every
    gt mask exactly; at stride 2 the binary target (rule T6) rounds the odd edges of a 9 px
    square (pixels 3..11) outwards to rows and columns 2..11 (IoU ~0.8, the corners drawn
    a little rounder), while the soft targets give the square back up to its corners."""
    from detectron2.data import DatasetCatalog
    from benchmarks.mask_target_ceiling import ceiling

    square = [[3.0, 3.0, 12.0, 3.0, 12.0, 12.0, 3.0, 12.0]]  # pixels 3..11
    record = {"height": 32, "width": 32, "annotations": [{"segmentation": square}]}
    name = "mask_target_ceiling_test"
    DatasetCatalog.register(name, lambda: [record])
    try:
        exact = ceiling(name, 1, "binary")
        assert exact["mean_iou"] == 1.0 and exact["area_ratio"] == 1.0
        binary, soft = ceiling(name, 2, "binary"), ceiling(name, 2, "area")
        assert binary["objects"] == 1 and 0.75 < binary["mean_iou"] < 0.85
        assert soft["mean_iou"] > 0.95 and soft["iou>=0.95"] == 1.0 and binary["iou>=0.85"] == 0.0
        # 10 x 10 drawn (rounded corners aside) for 9 x 9 gt pixels: ~1.2x too large
        assert 1.15 < binary["area_ratio"] < 100 / 81 + 1e-6
        assert abs(soft["area_ratio"] - 1.0) < 0.05
        # 0.5 at the half-covered pixels: the edges come back exactly, 3 corner pixels are lost
        half = ceiling(name, 2, "half_ties")
        assert half["mean_iou"] == pytest.approx(78 / 81) and half["area_ratio"] == half["mean_iou"]
    finally:
        DatasetCatalog.remove(name)


def test_mask_quality_ap_per_iou_and_outlines_of_exact_shifted_and_missing_masks():
    """benchmarks.mask_quality: exact masks give AP 100 at every IoU threshold and outlines of
    IoU 1 at the gt's size; one of two squares drawn 1 px too wide (IoU 0.9) keeps AP 100 up
    to IoU 0.85 and loses that object at 0.95, its area ratio and centroid offset showing the
    widening; without detections every object is missed."""
    import numpy as np
    from pycocotools import mask as mask_util
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode
    from benchmarks.mask_quality import IOU_THRESHOLDS, ap_per_iou, gt_coco, object_outlines

    def square(x, y, size):  # pixels x..x+size-1
        return [[x, y, x + size, y, x + size, y + size, x, y + size]]

    objects = [(2, 3, 9), (16, 14, 9)]
    record = {
        "file_name": "none.png", "image_id": 7, "height": 32, "width": 32,
        "annotations": [
            {"bbox": [x, y, s, s], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
             "segmentation": square(x, y, s), "iscrowd": 0}
            for x, y, s in objects
        ],
    }
    name = "mask_quality_test"
    DatasetCatalog.register(name, lambda: [record])
    MetadataCatalog.get(name).set(thing_classes=["square"])

    def result(x, y, width, height, score):
        mask = np.zeros((32, 32), dtype=np.uint8, order="F")
        mask[y : y + height, x : x + width] = 1
        rle = mask_util.encode(mask)
        rle["counts"] = rle["counts"].decode()
        return {"image_id": 7, "category_id": 0, "segmentation": rle, "score": score}

    try:
        gt = gt_coco(name)
        exact = [result(x, y, s, s, 0.9) for x, y, s in objects]
        assert ap_per_iou(gt, exact) == [100.0] * len(IOU_THRESHOLDS)
        row = object_outlines(gt, exact)
        assert row["objects"] == 2 and row["mean_iou"] == 1.0 and row["iou>=0.95"] == 1.0
        assert row["area_ratio"] == 1.0 and row["centroid_offset_std"] == 0.0

        wide = [result(2, 3, 10, 9, 0.9), result(16, 14, 9, 9, 0.8)]  # IoU 81 / 90
        aps = ap_per_iou(gt, wide)
        assert all(ap == 100.0 for t, ap in zip(IOU_THRESHOLDS, aps) if t < 0.9)
        assert aps[-1] < 100.0  # at 0.95 only the second square is found
        row = object_outlines(gt, wide)
        assert row["mean_iou"] == pytest.approx((0.9 + 1.0) / 2) and row["iou>=0.95"] == 0.5
        assert row["area_ratio"] == pytest.approx((10 / 9 + 1.0) / 2)
        assert row["centroid_offset_std"] > 0

        below_score = object_outlines(gt, [result(2, 3, 9, 9, 0.1)])
        assert below_score["mean_iou"] == 0.0 and below_score["iou>=0.75"] == 0.0
        assert ap_per_iou(gt, []) == [0.0] * len(IOU_THRESHOLDS)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_accuracy_sweep_ends_with_the_best_solver_without_rotations(monkeypatch):
    """The peer's tuning also tries the best setting without the quick configs' rotations,
    and that option reaches Mask R-CNN's config (shared INPUT keys go through the SOLO config)."""
    from benchmarks.accuracy_run import accuracy_config
    from benchmarks.sections import accuracy

    best_lr = {"shapes": "0.0028", "shapes_dense": "0.0014"}
    calls = []

    def fake_run(settings, case, model, opts, budget, name, evals=None):
        settings_ = dict(zip(opts[::2], opts[1::2]))
        score = 10.0 + (settings_.get("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE") == "128")
        score += 5.0 * (settings_.get("SOLVER.BASE_LR") == best_lr[case])
        calls.append((case, name, list(opts)))
        return {"case": case, "model": accuracy._label(model, opts), "curve": [{"mask_ap": score}]}

    monkeypatch.setattr(accuracy, "run_model", fake_run)
    settings = benchmark.Settings(device="cpu", threads=1, accuracy_budget=100.0)
    rows = accuracy.bench_accuracy_sweep(settings, None)
    per_case = len(accuracy.SWEEP_ROIS) + len(accuracy.SWEEP_SOLVERS) + 1
    assert len(rows) == len(calls) == len(accuracy.ACCURACY_CASES) * per_case
    for case in accuracy.ACCURACY_CASES:
        _, name, opts = [c for c in calls if c[0] == case][-1]
        assert name == "sweep_no_rot" and opts[-2:] == accuracy.NO_ROTATIONS
        settings_ = dict(zip(opts[::2], opts[1::2]))
        assert settings_["SOLVER.BASE_LR"] == best_lr[case]
        assert settings_["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"] == "128"
        assert [r for r in rows if r["case"] == case][-1]["model"].endswith("no rotations)")
        rcnn = accuracy_config("MaskRCNN", opts, case)
        assert rcnn.INPUT.RANDOM_ROTATION_ANGLES == []
        shared = accuracy_config("MaskRCNN", (), case).INPUT.RANDOM_ROTATION_ANGLES
        assert shared == [0, 90, 180, 270]
