"""detectron2 v0.6 on this torch / Pillow / NumPy: the compat layer and the installation."""

import importlib.metadata
import importlib.util

import numpy as np
import pytest
from PIL import Image

import solo_d2

needs_pure_python_d2 = pytest.mark.skipif(
    solo_d2.HAS_D2_CPP_OPS,
    reason="detectron2 has its C++ ops here: the placeholder is not installed",
)


def test_cpp_ops_flag_matches_the_installation():
    assert solo_d2.HAS_D2_CPP_OPS == (importlib.util.find_spec("detectron2._C") is not None)


@needs_pure_python_d2
def test_placeholder_ops_raise_a_clear_import_error():
    from detectron2 import _C

    with pytest.raises(ImportError, match="installed without its C\\+\\+ ops.*deform_conv_forward"):
        _C.deform_conv_forward
    # `import detectron2._C` still reports the module missing (detectron2's env report relies on it)
    with pytest.raises(ModuleNotFoundError):
        __import__("detectron2._C")


@needs_pure_python_d2
def test_modules_importing_cpp_ops_import_and_fail_only_when_used():
    import torch
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated
    from detectron2.utils.collect_env import collect_env_info

    boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0]])
    with pytest.raises(ImportError, match="installed without its C\\+\\+ ops.*box_iou_rotated"):
        pairwise_iou_rotated(boxes, boxes)
    assert "detectron2._C" in collect_env_info()


def test_pillow_and_numpy_aliases_used_by_detectron2():
    from detectron2.data.transforms import ExtentTransform
    from detectron2.data.build import print_instances_class_histogram

    assert Image.LINEAR == Image.BILINEAR
    assert np.int is int and np.float is float
    ExtentTransform((0, 0, 10, 10), (5, 5)).apply_image(np.zeros((10, 10, 3), dtype=np.uint8))
    print_instances_class_histogram([{"annotations": [{"category_id": 0}]}], ["a"])


@needs_pure_python_d2
def test_detectron2_is_an_installed_v06_distribution():
    import detectron2

    assert detectron2.__version__ == "0.6"
    dist = importlib.metadata.distribution("detectron2")
    assert dist.version == "0.6"
    files = {str(f) for f in dist.files}
    assert "detectron2/__init__.py" in files  # listed in RECORD: pip can uninstall it
    assert any(f.endswith("RECORD") for f in files)


def test_model_zoo_configs_are_packaged():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert path.endswith(".yaml") and cfg.MODEL.MASK_ON


def test_coco_evaluator_uses_the_fast_impl_only_with_cpp_ops(tmp_path):
    from detectron2.config import get_cfg
    from solo_d2.data import register_shapes_datasets
    from solo_d2.evaluation import build_evaluator

    _, val = register_shapes_datasets(
        root=str(tmp_path), num_train=1, num_val=2, image_size=64, prefix="compat_shapes"
    )
    from detectron2.data import DatasetCatalog

    DatasetCatalog.get(val)  # generate
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    evaluator = build_evaluator(cfg, val)
    assert evaluator._use_fast_impl == solo_d2.HAS_D2_CPP_OPS
    assert set(evaluator._tasks) == {"bbox", "segm"}
