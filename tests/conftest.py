"""Shared fixtures: tiny SOLO configs and synthetic inputs that run in milliseconds on CPU."""

import os

import pytest
import torch

import solo_d2  # noqa: F401  (compat shims before detectron2)
from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The devices of this machine that the device-aware tests run on (tests/test_devices.py).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs ``-n auto --dist loadfile``), each worker process
    takes its share of the cores as torch threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(session, config, items):
    """Files with the most end-to-end (``slow``) tests first, the rest in their order: with
    ``--dist loadfile`` the longest files then start first instead of ending the run alone."""
    slow_per_file = {}
    for item in items:
        slow_per_file.setdefault(item.fspath, 0)
        slow_per_file[item.fspath] += item.get_closest_marker("slow") is not None
    items.sort(key=lambda item: -slow_per_file[item.fspath])  # stable: same order per worker


TINY_OVERRIDES = [
    "MODEL.DEVICE",
    "cpu",
    # Detectron2's own ResNet-FPN (the quick configs' thin one: tests/test_backbone.py)
    "MODEL.BACKBONE.NAME",
    "build_resnet_fpn_backbone",
    "MODEL.RESNETS.DEPTH",
    "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "64",
    "MODEL.RESNETS.NORM",
    "GN",
    "MODEL.FPN.OUT_CHANNELS",
    "32",
    "MODEL.FPN.NORM",
    "GN",
    # random weights: GroupNorm everywhere (BatchNorm in eval mode with fresh running statistics
    # would normalise nothing; SOLOv2's quick config has BN in the head)
    "MODEL.SOLO.NORM",
    "GN",
    # SOLOv2's quick configs keep each mask's peak part, which has no graph form: the tiny
    # models export (tests/test_postprocess.py tests that filter)
    "MODEL.SOLO.KEEP_PEAK_COMPONENT_TEST",
    "False",
    "MODEL.SOLO.NUM_CLASSES",
    "3",
    "MODEL.SOLO.NUM_GRIDS",
    "[8, 6, 5, 4, 3]",
    "MODEL.SOLO.SCALE_RANGES",
    "[[1, 24], [12, 48], [24, 96], [48, 192], [96, 2048]]",
    "MODEL.SOLO.NUM_STACKED_CONVS",
    "1",
    "MODEL.SOLO.FEAT_CHANNELS",
    "32",
    "MODEL.SOLO.SCORE_THRESH_TEST",
    "0.0",
    "MODEL.WEIGHTS",
    "",
    # the quick configs' batch 8, 256 px images and bfloat16 are sized for the demo, not for
    # unit tests
    "SOLVER.IMS_PER_BATCH",
    "4",
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "SOLVER.AMP.ENABLED",
    "False",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "128",
]


def tiny_cfg(config_file="configs/SOLO_shapes_quick.yaml", extra=()):
    """A SOLO config with a minimal backbone and head (random weights)."""
    cfg = get_cfg()
    solo_d2.add_solo_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config_file))
    cfg.merge_from_list(TINY_OVERRIDES + list(extra))
    return cfg


def square_masks(boxes, height, width):
    """Bool[N, height, width] filled boxes (XYXY ints)."""
    masks = torch.zeros((len(boxes), height, width), dtype=torch.bool)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        masks[k, y1:y2, x1:x2] = True
    return masks


def make_input(boxes, classes, height=64, width=80, mask_format="bitmask", seed=0):
    """A Detectron2 training input with box-shaped gt masks in the given format."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if mask_format == "bitmask":
        instances.gt_masks = BitMasks(square_masks(boxes, height, width))
    elif mask_format == "polygon":
        instances.gt_masks = PolygonMasks(
            [[[x1, y1, x2, y1, x2, y2, x1, y2]] for x1, y1, x2, y2 in boxes]
        )
    return {
        "image": image,
        "instances": instances,
        "height": height,
        "width": width,
        "image_id": seed,
        "file_name": f"synthetic_{seed}.png",
    }


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
            ],
        ),
    ]
)
def device(request):
    """Every device: "cpu", and "cuda" (mark ``cuda``; skipped where CUDA is not available)."""
    return request.param


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny models: as fast, and immune to a busy machine
    (OpenMP threads of a small op waiting on a loaded core cost ~20x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model():
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    return build_model(tiny_cfg())
