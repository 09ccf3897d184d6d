"""Deployment (solo_d2.export): ONNX / TorchScript graphs with the post-processing inside.

Per head, one small model (``configs/<MODEL>_shapes_quick.yaml`` with the tiny overrides of
conftest) is exported **once**, traced while it detects nothing (category bias -30), so the
graphs must hold for any N. Then the bias of the category output is set back in the exported
files (an ONNX initializer, a TorchScript parameter), which makes the model detect: outputs of
ONNX Runtime and TorchScript are compared with eager PyTorch on two images of different sizes.
The ONNX files run in a subprocess that cannot import torch, Detectron2 or solo_d2.

Also: DCN configs (ONNX DeformConv), ``tools/export_model.py`` on the shapes quick SOLOv2 config
and on released original-layout files (their detections equal the original code's),
``OnnxPredictor`` against ``DefaultPredictor`` and ``tools/predict.py --onnx``.
"""

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch

import solo_d2
from conftest import REPO, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from solo_d2.export import (
    ExportError,
    OnnxPredictor,
    export_metadata,
    export_onnx,
    export_torchscript,
    load_torchscript,
)
from solo_d2.export.verify import match_detections
from export_helpers import (
    MODELS,
    SHAPES_256,
    SHAPES_256_MODEL,
    as_input,
    assert_exports_like_eager,
    assert_same_detections,
    calibrate_batch_norm,
    eager_outputs,
    load_tool,
    make_detecting,
    synthetic_image,
)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

IMAGE_SIZES = [(256, 256), (200, 296)]  # the second is padded to 224 x 320 in the graph
BIAS = "head.cate_pred.bias"
NO_DETECTION_BIAS = -30.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Exported:
    """One head's model (detecting), its exports (traced detecting nothing), and test inputs."""

    def __init__(self, name, folder):
        self.name = name
        cfg = tiny_cfg(
            f"configs/{name}_shapes_quick.yaml",
            ["MODEL.SOLO.SCORE_THRESH_TEST", "0.1"] + SHAPES_256,
        )
        torch.manual_seed(0)
        self.model = make_detecting(build_model(cfg).eval())
        silent = copy.deepcopy(self.model)
        with torch.no_grad():
            silent.head.cate_pred.bias.fill_(NO_DETECTION_BIAS)
        sample = as_input(synthetic_image(160, 224, seed=9))
        self.onnx_silent = export_onnx(
            silent, str(folder / "silent.onnx"), sample, metadata=export_metadata(cfg)
        )
        self.ts_silent = export_torchscript(silent, str(folder / "silent.ts"), sample)
        # The same graph with the detecting bias: only this initializer changes.
        proto = onnx.load(self.onnx_silent)
        (init,) = [i for i in proto.graph.initializer if i.name == f"model.{BIAS}"]
        bias = self.model.head.cate_pred.bias.detach().numpy()
        init.CopyFrom(onnx.numpy_helper.from_array(bias, init.name))
        self.onnx = str(folder / "model.onnx")
        onnx.save(proto, self.onnx)
        self.images = [synthetic_image(h, w, seed) for seed, (h, w) in enumerate(IMAGE_SIZES)]

    def torchscript(self, detecting=True):
        module, _ = load_torchscript(self.ts_silent)
        if detecting:
            with torch.no_grad():
                dict(module.named_parameters())[f"model.{BIAS}"].copy_(
                    self.model.head.cate_pred.bias
                )
        return module


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory):
    return Exported(request.param, tmp_path_factory.mktemp(request.param))


def test_onnx_graph_passes_the_checker_with_named_dynamic_shapes(exported):
    proto = onnx.load(exported.onnx)
    onnx.checker.check_model(proto, full_check=True)

    def signature(values):
        return {
            v.name: (
                onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type),
                [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        }

    assert signature(proto.graph.input) == {"image": ("FLOAT", [3, "height", "width"])}
    assert signature(proto.graph.output) == {
        "masks": ("BOOL", ["num_detections", "height", "width"]),
        "scores": ("FLOAT", ["num_detections"]),
        "classes": ("INT64", ["num_detections"]),
        "boxes": ("FLOAT", ["num_detections", 4]),
    }
    ops = {node.op_type for node in proto.graph.node}
    assert {"NonZero", "TopK", "Resize"} <= ops  # candidates, sorting, pasting are in the graph
    metadata = json.loads({p.key: p.value for p in proto.metadata_props}["solo_d2"])
    assert metadata["input_format"] == "RGB" and metadata["min_size_test"] == 256


# Done in a subprocess where importing torch, detectron2 or solo_d2 fails: the graph runs in
# ONNX Runtime alone.
ORT_ONLY = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "detectron2", "solo_d2", "torchvision"):
                raise ImportError("blocked: " + name)
    sys.meta_path.insert(0, Block())
    import numpy as np, onnxruntime
    session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    results = {}
    for k, path in enumerate(sys.argv[3:]):
        outputs = session.run(None, {"image": np.load(path)})
        for name, value in zip(["masks", "scores", "classes", "boxes"], outputs):
            results[f"{name}{k}"] = value
    assert not any(m.split(".")[0] in ("torch", "detectron2", "solo_d2") for m in sys.modules)
    np.savez(sys.argv[2], **results)
    """)


def run_onnx_alone(model_path, images, tmp_path):
    paths = []
    for k, image in enumerate(images):
        paths.append(str(tmp_path / f"image{k}.npy"))
        np.save(paths[-1], as_input(image).numpy())
    result = tmp_path / "outputs.npz"
    proc = subprocess.run(
        [sys.executable, "-c", ORT_ONLY, model_path, str(result), *paths],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout
    outputs = np.load(result)
    names = ["masks", "scores", "classes", "boxes"]
    return [[outputs[f"{n}{k}"] for n in names] for k in range(len(images))]


def test_onnx_runtime_alone_equals_eager_pytorch(exported, tmp_path):
    got = run_onnx_alone(exported.onnx, exported.images, tmp_path)
    for image, outputs in zip(exported.images, got):
        expected = eager_outputs(exported.model, as_input(image))
        height, width = image.shape[:2]
        masks, scores, classes, boxes = outputs
        n = len(scores)
        assert n >= 3, "the test model should detect something"
        assert masks.shape == (n, height, width) and masks.dtype == np.bool_
        assert scores.dtype == np.float32 and classes.dtype == np.int64
        assert boxes.shape == (n, 4) and boxes.dtype == np.float32
        assert (np.diff(scores) <= 0).all()
        assert_same_detections(expected, outputs, f"{exported.name} ONNX at {height}x{width}")


def test_no_detection_gives_empty_outputs(exported):
    session = ort.InferenceSession(exported.onnx_silent, providers=["CPUExecutionProvider"])
    module = exported.torchscript(detecting=False)
    for image in exported.images:
        height, width = image.shape[:2]
        onnx_outputs = session.run(None, {"image": as_input(image).numpy()})
        with torch.no_grad():
            ts_outputs = [o.numpy() for o in module(as_input(image))]
        for outputs in (onnx_outputs, ts_outputs):
            shapes = [o.shape for o in outputs]
            assert shapes == [(0, height, width), (0,), (0,), (0, 4)]
            assert [o.dtype for o in outputs] == [np.bool_, np.float32, np.int64, np.float32]


def test_torchscript_equals_eager_pytorch(exported):
    module = exported.torchscript()
    for image in exported.images:
        expected = eager_outputs(exported.model, as_input(image))
        with torch.no_grad():
            got = module(as_input(image))
        assert len(got[1]) >= 3
        assert [o.dtype for o in got] == [torch.bool, torch.float32, torch.int64, torch.float32]
        assert_same_detections(expected, got, f"{exported.name} TorchScript")


def test_deformable_convs_export_as_onnx_deform_conv(tmp_path):
    """DCN (torchvision::deform_conv2d) exports as the standard DeformConv op (opset 19), runs
    in ONNX Runtime like eager; an older opset is refused naming the op and the config keys."""
    dcn = ["MODEL.SOLO.DCN_TOWER_LAYERS", "last", "MODEL.SOLO.USE_DCN_IN_MASK_FEATURES", "True"]
    cfg = tiny_cfg(
        "configs/SOLOv2_shapes_quick.yaml", ["MODEL.SOLO.SCORE_THRESH_TEST", "0.1", *dcn]
    )
    torch.manual_seed(0)
    model = make_detecting(build_model(cfg).eval())
    with torch.no_grad():  # non-zero offsets, so that the deformation matters
        for name, param in model.named_parameters():
            if name.endswith("offset_weight"):
                param.normal_(std=0.01, generator=torch.Generator().manual_seed(1))
    image = as_input(synthetic_image(200, 296, seed=1))
    with pytest.raises(ExportError, match="deform_conv2d.*DeformConv.*DCN_TOWER_LAYERS"):
        export_onnx(model, str(tmp_path / "old.onnx"), image, opset=17)
    path = assert_exports_like_eager(model, image, tmp_path, "SOLOv2 DCN")
    assert "DeformConv" in {node.op_type for node in onnx.load(path).graph.node}


def test_finer_mask_output_stride_exports_like_eager(tmp_path):
    """MODEL.SOLO.MASK_OUTPUT_STRIDE 2 (upsampled logits, masks compared at H/2) gives eager's
    detections in ONNX Runtime and TorchScript."""
    cfg = tiny_cfg(
        "configs/SOLOv2_shapes_quick.yaml",
        ["MODEL.SOLO.SCORE_THRESH_TEST", "0.1", "MODEL.SOLO.MASK_OUTPUT_STRIDE", "2"],
    )
    torch.manual_seed(0)
    model = make_detecting(build_model(cfg).eval())
    image = as_input(synthetic_image(200, 296, seed=1))
    assert_exports_like_eager(model, image, tmp_path, "SOLOv2 stride-2 masks")


@pytest.mark.parametrize("name", ["SOLOv2_shapes_quick", "SOLOv2_shapes_dense_quick"])
def test_a_quick_config_refuses_export_until_its_stray_part_filter_is_off(name, tmp_path):
    """SOLOv2's quick configs keep each mask's peak part (KEEP_PEAK_COMPONENT_TEST, which has
    no graph form): export names the key to turn off before it builds or writes anything."""
    from solo_d2.export import export_from_config

    cfg = get_cfg()
    solo_d2.add_solo_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, f"configs/{name}.yaml"))
    assert cfg.MODEL.SOLO.KEEP_PEAK_COMPONENT_TEST
    cfg.merge_from_list(["MODEL.WEIGHTS", str(tmp_path / "missing.pth")])
    with pytest.raises(ValueError, match="KEEP_PEAK_COMPONENT_TEST False"):
        export_from_config(cfg, "onnx", str(tmp_path))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("per_level", ["False", "True"])
def test_a_batch_norm_head_exports_like_eager(per_level, tmp_path):
    """SOLOv2's quick config has BatchNorm in the head (towers and mask features): in eval mode
    a fixed affine map, and ONNX Runtime and TorchScript give eager's detections, also with one
    BatchNorm per level in the towers (NORM_PER_LEVEL, the dense quick config)."""
    cfg = tiny_cfg(
        "configs/SOLOv2_shapes_quick.yaml",
        ["MODEL.SOLO.NORM", "BN", "MODEL.SOLO.SCORE_THRESH_TEST", "0.1"]
        + ["MODEL.SOLO.NORM_PER_LEVEL", per_level],
    )
    torch.manual_seed(0)
    images = [as_input(synthetic_image(200, 296, seed)) for seed in range(3)]
    model = calibrate_batch_norm(make_detecting(build_model(cfg).eval()), images[1:])
    norms = [m for m in model.head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(n.num_batches_tracked > 0 for n in norms)
    assert_exports_like_eager(model, images[0], tmp_path, "SOLOv2 BN")


#: The quick config's stray-part filter has no graph form: export without it, as a user must.
NO_PEAK_FILTER = ["MODEL.SOLO.KEEP_PEAK_COMPONENT_TEST", "False"]


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """tools/export_model.py on configs/SOLOv2_shapes_quick.yaml with a checkpoint as the
    trailing MODEL.WEIGHTS, as in the README."""
    folder = tmp_path_factory.mktemp("cli")
    cfg = get_cfg()
    solo_d2.add_solo_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs/SOLOv2_shapes_quick.yaml"))
    cfg.merge_from_list(SHAPES_256 + SHAPES_256_MODEL + NO_PEAK_FILTER)
    torch.manual_seed(0)
    model = make_detecting(build_model(cfg).eval(), cate_bias=-5.0)  # wider than the tiny models
    DetectionCheckpointer(model, save_dir=str(folder)).save("model")
    weights = str(folder / "model.pth")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = load_tool("export_model").main(
            [
                "--config-file",
                os.path.join(REPO, "configs/SOLOv2_shapes_quick.yaml"),
                "--format",
                "onnx",
                "--output",
                str(folder / "out"),
                "MODEL.WEIGHTS",
                weights,
                *SHAPES_256,
                *SHAPES_256_MODEL,
                *NO_PEAK_FILTER,
            ]
        )
    return {
        "folder": folder,
        "weights": weights,
        "result": result,
        "printed": printed.getvalue(),
        "cfg": cfg,
        "model": model,
    }


def test_export_model_tool_writes_a_verified_onnx_file(cli_export, tmp_path):
    result = cli_export["result"]
    assert result["path"] == str(cli_export["folder"] / "out" / "model.onnx")
    assert result["verify"]["ok"]
    assert result["signature"]["inputs"] == {"image": ["FLOAT", [3, "height", "width"]]}
    assert result["signature"]["outputs"]["boxes"] == ["FLOAT", ["num_detections", 4]]
    printed = cli_export["printed"]
    assert "input  image    FLOAT    [3, height, width]" in printed
    assert "output masks    BOOL     [num_detections, height, width]" in printed
    # The file runs in ONNX Runtime alone and equals eager PyTorch (shapes quick SOLOv2).
    images = [synthetic_image(256, 256, seed=0), synthetic_image(192, 256, seed=1)]
    for image, outputs in zip(images, run_onnx_alone(result["path"], images, tmp_path)):
        expected = eager_outputs(cli_export["model"], as_input(image))
        assert len(expected[1]) >= 3
        assert_same_detections(expected, outputs, "tools/export_model.py SOLOv2 shapes quick")


def test_onnx_predictor_matches_default_predictor(cli_export):
    from detectron2.engine import DefaultPredictor

    cfg = cli_export["cfg"].clone()
    cfg.MODEL.WEIGHTS = cli_export["weights"]
    default = DefaultPredictor(cfg)
    predictor = OnnxPredictor(cli_export["result"]["path"])
    # no pre-planned memory pattern (it raised the peak ~1.3-2x with these dynamic shapes)
    assert predictor.session.get_session_options().enable_mem_pattern is False
    # 256 x 256 needs no resize; 180 x 300 is resized to 154 x 256 (short side 256, max 256).
    for (height, width), seed in [((256, 256), 0), ((180, 300), 1)]:
        image = synthetic_image(height, width, seed)
        expected = default(image)["instances"]
        got = predictor(image)
        assert got.image_size == (height, width) and len(got) >= 3
        assert got.pred_masks.shape == (len(got), height, width)
        fields = [expected.pred_masks, expected.scores, expected.pred_classes]
        if (height, width) == (256, 256):
            assert_same_detections(
                [*fields, expected.pred_boxes.tensor],
                [got.pred_masks, got.scores, got.pred_classes, got.pred_boxes.tensor],
                "OnnxPredictor",
            )
        else:  # masks pasted from the binary masks (DefaultPredictor: soft masks)
            report = match_detections(
                [*fields, expected.pred_boxes.tensor],
                [got.pred_masks, got.scores, got.pred_classes, got.pred_boxes.tensor],
                min_iou=0.9,
            )
            assert report["matched"] == len(expected) == len(got), report
            assert report["min_iou"] >= 0.9, report


def test_benchmark_measures_the_graph_in_a_process_without_torch(cli_export, tmp_path):
    """The export benchmark's ONNX Runtime memory is that of a deployment process: the graph,
    ONNX Runtime and numpy, no torch (whose import alone is ~800 MB resident)."""
    from benchmarks.sections.export import onnx_peak_mb

    image_path = str(tmp_path / "image.npy")
    np.save(image_path, synthetic_image(256, 256, seed=0).transpose(2, 0, 1).astype(np.float32))
    memory = onnx_peak_mb(cli_export["result"]["path"], image_path, threads=1)
    assert memory["torch_imported"] is False
    assert 0 < memory["base_mb"] <= memory["peak_mb"] < 400, memory


def test_predict_tool_runs_an_onnx_model(cli_export, tmp_path):
    image_path = str(tmp_path / "picture.png")
    cv2.imwrite(image_path, synthetic_image(180, 300, seed=1))
    results = load_tool("predict").main(
        [
            "--onnx",
            cli_export["result"]["path"],
            "--input",
            image_path,
            "--output",
            str(tmp_path / "vis"),
            "--json",
            str(tmp_path / "preds.json"),
        ]
    )
    assert os.path.isfile(tmp_path / "vis" / "picture.png")
    assert len(results) >= 3 and json.load(open(tmp_path / "preds.json")) == results
    assert {r["category_id"] for r in results} <= {1, 2, 3, 4}


def test_missing_onnxruntime_is_a_clear_error(monkeypatch, cli_export):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'solo_d2\[export\]'"):
        OnnxPredictor(cli_export["result"]["path"])


def test_mask_boxes_equal_detectron2_bitmask_boxes():
    """The loop-free tight boxes of the post-processing (rule I7) equal Detectron2's."""
    from detectron2.structures import BitMasks

    from solo_d2.modeling.postprocess import mask_boxes

    masks = torch.rand(7, 13, 17, generator=torch.Generator().manual_seed(0)) > 0.97
    masks[2] = False  # empty mask: a zero box
    masks[3] = False
    masks[3, 12, 16] = True  # one pixel in the corner
    assert torch.equal(mask_boxes(masks), BitMasks(masks).get_bounding_boxes().tensor)
    assert mask_boxes(masks[:0]).shape == (0, 4)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_detectron2_deformable_convs_export_like_torchvision(tmp_path):
    """Backbone DCN (MODEL.RESNETS.DEFORM_ON_PER_STAGE): Detectron2's DeformConv and
    ModulatedDeformConv run on torchvision::deform_conv2d, so they export as DeformConv too."""
    from detectron2.layers import DeformConv, ModulatedDeformConv

    from solo_d2.export.onnx import register_deform_conv_symbolic

    class Layer(torch.nn.Module):
        def __init__(self, modulated):
            super().__init__()
            self.modulated = modulated
            self.offsets = torch.nn.Conv2d(8, 27 if modulated else 18, 3, padding=1)
            torch.nn.init.normal_(self.offsets.weight, std=0.1)
            self.conv = (ModulatedDeformConv if modulated else DeformConv)(
                8, 6, 3, padding=1, bias=False
            )

        def forward(self, x):
            offsets = self.offsets(x)
            if self.modulated:
                return self.conv(x, offsets[:, :18], offsets[:, 18:].sigmoid())
            return self.conv(x, offsets)

    register_deform_conv_symbolic()
    torch.manual_seed(0)
    for modulated in (True, False):
        layer, path = Layer(modulated).eval(), str(tmp_path / f"dcn{modulated}.onnx")
        torch.onnx.export(
            layer,
            (torch.randn(1, 8, 12, 15),),
            path,
            dynamo=False,
            opset_version=19,
            input_names=["x"],
            dynamic_axes={"x": [2, 3]},
        )
        x = torch.randn(1, 8, 10, 17)
        got = ort.InferenceSession(path).run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            assert np.abs(got - layer(x).numpy()).max() < 1e-5


@pytest.mark.parametrize("kind", ["solo", "solov2"])
def test_released_original_checkpoint_exports_and_reproduces_the_original_detections(
    kind, tmp_path
):
    """tools/export_model.py with a file in the released WXinlong/SOLO layout as the trailing
    MODEL.WEIGHTS (the oracle fixtures of test_checkpoint_oracle.py): ONNX Runtime gives the
    detections the original code computed with it."""
    from test_checkpoint_oracle import config_for, expected_detections, load_case, released_file

    case = load_case(kind)
    released = released_file(case, tmp_path / "released.pth")
    config = tmp_path / "config.yaml"
    config.write_text(config_for(case).dump())
    image_path = str(tmp_path / "image.png")
    cv2.imwrite(image_path, case["image"].numpy()[:, :, ::-1])  # the fixture image is RGB
    result = load_tool("export_model").main(
        [
            "--config-file",
            str(config),
            "--output",
            str(tmp_path / "out"),
            "--sample-image",
            image_path,
            "MODEL.WEIGHTS",
            released,
        ]
    )
    assert result["verify"]["ok"], result["verify"]  # equal to eager PyTorch
    image = case["image"].numpy().transpose(2, 0, 1).astype(np.float32)
    masks, scores, classes, boxes = ort.InferenceSession(result["path"]).run(None, {"image": image})
    expected_masks, expected_labels, expected_scores = expected_detections(case["results"])
    report = match_detections(
        [expected_masks, expected_scores, expected_labels, np.zeros((len(expected_scores), 4))],
        [masks, scores, classes, np.zeros((len(scores), 4))],
        score_tol=1e-4,
        min_iou=0.98,  # the original's own tolerance in test_checkpoint_oracle.py
    )
    assert report["ok"] and report["matched"] >= 10, report


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_traced_pasting_runs_in_chunks_and_equals_eager_for_any_count():
    """The graph form of mask pasting (rule I6): ceil(max_masks / 4) unrolled chunks of 4
    masks (at most 4 soft masks at full size exist at a time), slices past K empty; the same
    binary masks as eager for K = 0 .. max_masks, and for a crop to another output size."""
    from solo_d2.modeling.postprocess import resize_masks

    def paste(probs):
        return resize_masks(probs, (64, 96), (60, 90), (60, 90), 0.5, max_masks=10)

    generator = torch.Generator().manual_seed(0)
    traced = torch.jit.trace(paste, (torch.rand(7, 16, 24, generator=generator),))
    resizes = [n for n in traced.graph.nodes() if "upsample" in n.kind()]
    assert len(resizes) == 3  # ceil(10 / 4) chunks
    for count in (0, 1, 4, 9, 10):
        probs = torch.rand(count, 16, 24, generator=generator)
        assert torch.equal(traced(probs), paste(probs)), count
    other_size = torch.rand(5, 16, 24, generator=generator)
    expected = resize_masks(other_size, (64, 96), (60, 90), (120, 180), 0.5)
    traced_other = torch.jit.trace(
        lambda p: resize_masks(p, (64, 96), (60, 90), (120, 180), 0.5, max_masks=8),
        (other_size,),
    )
    assert torch.equal(traced_other(other_size), expected)
