"""A small, deterministic, synthetic instance-segmentation dataset ("shapes") in COCO format.

Each image has a textured background and 1-8 filled shapes of random class, colour, rotation,
position and size (from a few pixels to most of the image). Shapes may overlap each other and
be cut by the image border; annotations describe the *visible* part of every instance.

Layout under a root directory (by default ``<datasets root>/shapes``)::

    <root>/<split>/000000.png ...
    <root>/annotations/instances_<split>.json

``python -m solo_d2.data.shapes --root DIR`` generates the default splits.
"""

import argparse
import contextlib
import functools
import glob
import json
import math
import os
import re
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import cv2
import numpy as np

try:  # POSIX only; without it concurrent generators are not serialised (writes stay atomic)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "SHAPES_CLASSES",
    "NUM_TRAIN_IMAGES",
    "NUM_VAL_IMAGES",
    "IMAGE_SIZE",
    "DEFAULT_SEED",
    "MIN_IMAGE_SIZE",
    "ShapeInstance",
    "ShapesImage",
    "render_shapes_image",
    "mask_to_polygons",
    "generate_shapes_dataset",
    "default_datasets_root",
    "shapes_root",
    "register_shapes_datasets",
]

SHAPES_CLASSES = ("circle", "square", "triangle", "star")
NUM_TRAIN_IMAGES = 300
NUM_VAL_IMAGES = 50
IMAGE_SIZE = 256
DEFAULT_SEED = 0
MIN_IMAGE_SIZE = 32

MIN_SHAPES, MAX_SHAPES = 1, 8
TINY_FRACTION = 0.2  # share of shapes drawn "tiny": sqrt(area) in TINY_SCALE
TINY_SCALE = (4.0, 8.0)
MAX_SCALE_FRACTION = 0.9  # the largest shapes have sqrt(area) = 0.9 * image_size
MIN_VISIBLE_AREA = 4  # instances with fewer visible pixels are not annotated
STAR_INNER_RATIO = 0.45
FORMAT_VERSION = 1

# Polygon extraction: the mask is upsampled by _UPSAMPLE so that contours (which pass through
# pixel centres) lie within 1/8 px of the true pixel edges; rasterising the polygons with
# pycocotools then reproduces the mask exactly. _APPROX_EPS (upsampled px) drops collinear points.
_UPSAMPLE = 4
_APPROX_EPS = 1.0
_SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class ShapeInstance:
    """One drawn shape. ``polygons`` is empty when the instance is not annotated."""

    category_id: int  # 1..len(SHAPES_CLASSES)
    mask: np.ndarray  # full shape, bool HxW (clipped to the image)
    visible: np.ndarray  # part not covered by shapes drawn later, bool HxW
    polygons: List[List[float]] = field(default_factory=list)

    @property
    def class_name(self) -> str:
        return SHAPES_CLASSES[self.category_id - 1]

    @property
    def annotated(self) -> bool:
        return bool(self.polygons)

    @property
    def area(self) -> int:
        return int(self.visible.sum())

    @property
    def bbox(self) -> List[float]:
        """XYWH box of the visible mask (pixel-edge coordinates)."""
        ys, xs = np.nonzero(self.visible)
        if len(xs) == 0:
            return [0.0, 0.0, 0.0, 0.0]
        x0, y0 = int(xs.min()), int(ys.min())
        return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


@dataclass
class ShapesImage:
    image: np.ndarray  # HxWx3 uint8, BGR
    instances: List[ShapeInstance]  # in drawing order (later ones on top)

    @property
    def annotated_instances(self) -> List[ShapeInstance]:
        return [inst for inst in self.instances if inst.annotated]


# ----------------------------------------------------------------------------- validation
def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_split(split):
    if not isinstance(split, str) or not _SPLIT_RE.match(split):
        raise ValueError(
            f"split must be a non-empty name of letters, digits, '_' or '-', got {split!r}"
        )
    return split


# ----------------------------------------------------------------------------- rendering
def _image_rng(seed, split, index):
    # crc32 (not hash()) so that the stream is the same in every process
    return np.random.default_rng([seed, zlib.crc32(split.encode("utf-8")), index])


def _background(rng, size):
    coords = np.arange(size, dtype=np.float32) + 0.5
    xx, yy = np.meshgrid(coords, coords)
    angle = rng.uniform(0, 2 * np.pi)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / size
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    img = c0 + t[..., None] * (c1 - c0)
    grid = int(rng.integers(3, 9))
    blobs = rng.normal(0, 30, size=(grid, grid, 3)).astype(np.float32)
    img += cv2.resize(blobs, (size, size), interpolation=cv2.INTER_CUBIC)
    return img


def _shape_vertices(category_id, cx, cy, scale, angle):
    """Vertices (N x 2, float) of a polygonal shape whose area is ``scale ** 2``."""
    name = SHAPES_CLASSES[category_id - 1]
    if name == "square":
        radius, k = scale / math.sqrt(2), 4
        radii = np.full(k, radius)
    elif name == "triangle":
        radius, k = scale / math.sqrt(3 * math.sqrt(3) / 4), 3
        radii = np.full(k, radius)
    elif name == "star":
        radius = scale / math.sqrt(5 * STAR_INNER_RATIO * math.sin(math.pi / 5))
        k = 10
        radii = np.where(np.arange(k) % 2 == 0, radius, radius * STAR_INNER_RATIO)
    else:
        raise ValueError(f"{name} is not polygonal")
    theta = angle + np.arange(k) * 2 * np.pi / k
    return np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1)


def _draw_mask(size, category_id, cx, cy, scale, angle):
    """Rasterise one shape (continuous coordinates, pixel centres at i + 0.5) into a bool mask."""
    mask = np.zeros((size, size), np.uint8)
    shift = 4  # cv2 sub-pixel precision (1/16 px); cv2 puts pixel centres at integers
    fix = float(1 << shift)
    if SHAPES_CLASSES[category_id - 1] == "circle":
        center = (int(round((cx - 0.5) * fix)), int(round((cy - 0.5) * fix)))
        radius = int(round(scale / math.sqrt(math.pi) * fix))
        cv2.circle(mask, center, radius, 1, thickness=-1, lineType=cv2.LINE_8, shift=shift)
    else:
        pts = _shape_vertices(category_id, cx, cy, scale, angle) - 0.5
        pts = np.round(pts * fix).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


def mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
    """COCO polygons (outer contours, >= 3 points each) that rasterise back to ``mask``."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return []
    x0, y0 = int(xs.min()), int(ys.min())
    crop = mask[y0 : ys.max() + 1, x0 : xs.max() + 1].astype(np.uint8)
    crop = np.pad(crop, 1)
    up = cv2.resize(crop, None, fx=_UPSAMPLE, fy=_UPSAMPLE, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        contour = cv2.approxPolyDP(contour, _APPROX_EPS, True).reshape(-1, 2)
        if len(contour) < 3:
            continue
        pts = (contour.astype(np.float64) + 0.5) / _UPSAMPLE + (x0 - 1, y0 - 1)
        polygons.append([float(v) for v in pts.ravel()])
    return polygons


def render_shapes_image(seed: int, split: str, index: int, image_size: int) -> ShapesImage:
    """Render image ``index`` of ``split``; depends only on the arguments (not on call order)."""
    seed = _check_int("seed", seed, 0)
    split = _check_split(split)
    index = _check_int("index", index, 0)
    size = _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    rng = _image_rng(seed, split, index)
    canvas = _background(rng, size)

    num = int(rng.integers(MIN_SHAPES, MAX_SHAPES + 1))
    max_scale = MAX_SCALE_FRACTION * size
    specs = []
    for _ in range(num):
        category_id = int(rng.integers(1, len(SHAPES_CLASSES) + 1))
        if rng.random() < TINY_FRACTION:
            scale = rng.uniform(*TINY_SCALE)
        else:
            scale = math.exp(rng.uniform(math.log(TINY_SCALE[1]), math.log(max_scale)))
        margin = 0.2 * scale  # lets shapes stick out of the image
        cx, cy = rng.uniform(-margin, size + margin, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        # roughly large-to-small drawing order, with enough noise for real occlusions
        order_key = -math.log(scale) + rng.normal(0, 0.7)
        specs.append((order_key, category_id, cx, cy, scale, angle))
    specs.sort(key=lambda s: s[0])

    instances = []
    for _, category_id, cx, cy, scale, angle in specs:
        mask = _draw_mask(size, category_id, cx, cy, scale, angle)
        color = rng.uniform(0, 255, size=3).astype(np.float32)
        shade_angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.nonzero(mask)
        if len(xs):
            under = canvas[ys, xs].mean(axis=0)
            for _ in range(10):  # keep shapes distinguishable from what they cover
                if np.linalg.norm(color - under) >= 90:
                    break
                color = rng.uniform(0, 255, size=3).astype(np.float32)
            ramp = (xs + 0.5 - cx) * np.cos(shade_angle) + (ys + 0.5 - cy) * np.sin(shade_angle)
            shade = 1.0 + 0.25 * np.clip(ramp / size, -1, 1)
            canvas[ys, xs] = color * shade[:, None].astype(np.float32)
        instances.append(ShapeInstance(category_id, mask, mask.copy()))

    covered = np.zeros((size, size), bool)
    for inst in reversed(instances):
        inst.visible &= ~covered
        covered |= inst.mask
        if inst.visible.sum() >= MIN_VISIBLE_AREA:
            inst.polygons = mask_to_polygons(inst.visible)

    canvas += rng.standard_normal(size=canvas.shape, dtype=np.float32) * 3
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return ShapesImage(image, instances)


# ----------------------------------------------------------------------------- dataset files
def _generation_params(split, num_images, image_size, seed):
    return {
        "generator": "solo_d2.data.shapes",
        "format_version": FORMAT_VERSION,
        "split": split,
        "num_images": num_images,
        "image_size": image_size,
        "seed": seed,
        "classes": list(SHAPES_CLASSES),
    }


def _paths(root, split):
    return os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split)


def _is_complete(json_path, image_dir, params):
    try:
        with open(json_path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("info", {}).get("params") != params:
        return False
    images = data.get("images", [])
    return len(images) == params["num_images"] and all(
        os.path.isfile(os.path.join(image_dir, im["file_name"])) for im in images
    )


@contextlib.contextmanager
def _split_lock(root, split):
    if fcntl is None:  # pragma: no cover
        yield False
        return
    with open(os.path.join(root, f".{split}.lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_coco(params, image_dir):
    """Render every image into ``image_dir``; returns the COCO dict."""
    images, annotations = [], []
    size = params["image_size"]
    for index in range(params["num_images"]):
        sample = render_shapes_image(params["seed"], params["split"], index, size)
        file_name = f"{index:06d}.png"
        ok, buf = cv2.imencode(".png", sample.image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:  # pragma: no cover
            raise RuntimeError(f"could not encode {file_name}")
        with open(os.path.join(image_dir, file_name), "wb") as f:
            f.write(buf.tobytes())
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        for inst in sample.annotated_instances:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": inst.category_id,
                    "segmentation": inst.polygons,
                    "area": float(inst.area),
                    "bbox": inst.bbox,
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(SHAPES_CLASSES)
    ]
    info = {"description": "solo_d2 synthetic shapes", "params": params}
    return {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def generate_shapes_dataset(
    root: str,
    split: str,
    num_images: int,
    image_size: int = IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
) -> Tuple[str, str]:
    """Generate (or reuse) one split under ``root``; returns ``(json_path, image_dir)``.

    Output is byte-identical for identical arguments. An existing dataset generated with the
    same parameters is reused. Images are rendered into a temporary directory that is renamed
    into place, and the json is written last, so an interrupted or concurrent run never leaves
    a dataset that looks complete but is not.
    """
    split = _check_split(split)
    num_images = _check_int("num_images", num_images, 1)
    image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    seed = _check_int("seed", seed, 0)
    if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
        raise ValueError(f"root must be a non-empty path, got {root!r}")
    root = os.path.abspath(os.fspath(root))
    params = _generation_params(split, num_images, image_size, seed)
    json_path, image_dir = _paths(root, split)
    if _is_complete(json_path, image_dir, params):
        return json_path, image_dir

    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    tmp_prefix = f".{split}.tmp-"
    with _split_lock(root, split) as locked:
        if _is_complete(json_path, image_dir, params):  # made by a concurrent process
            return json_path, image_dir
        if locked:  # leftovers of interrupted runs (every generator holds the lock)
            for stale in glob.glob(os.path.join(root, glob.escape(tmp_prefix) + "*")):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=tmp_prefix, dir=root)
        try:
            tmp_images = os.path.join(tmp, "images")
            os.mkdir(tmp_images)
            coco = _build_coco(params, tmp_images)
            tmp_json = os.path.join(tmp, "instances.json")
            with open(tmp_json, "w", encoding="utf-8") as f:
                json.dump(coco, f, separators=(",", ":"))
            # swap in: invalidate the old json first, publish the new json last
            if os.path.lexists(json_path):
                os.remove(json_path)
            if os.path.lexists(image_dir):
                os.rename(image_dir, os.path.join(tmp, "old"))
            os.rename(tmp_images, image_dir)
            os.replace(tmp_json, json_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return json_path, image_dir


# ----------------------------------------------------------------------------- registration
def default_datasets_root() -> str:
    """Where datasets live: ``$SOLO_D2_DATASETS``, else Detectron2's ``$DETECTRON2_DATASETS``,
    else ``./datasets`` (relative to the working directory, as Detectron2's builtin datasets)."""
    for variable in ("SOLO_D2_DATASETS", "DETECTRON2_DATASETS"):
        if os.environ.get(variable):
            return os.path.abspath(os.path.expanduser(os.environ[variable]))
    return os.path.abspath("datasets")


def shapes_root(datasets_root: Optional[str] = None) -> str:
    """Directory of the shapes dataset: ``<datasets root>/shapes``."""
    return os.path.join(datasets_root or default_datasets_root(), "shapes")


def _load_split(name, root, split, num_images, image_size, seed):
    """Generate (first time) and load a split; a lazily registered root is resolved now."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    root = root or shapes_root()
    json_path, image_dir = generate_shapes_dataset(root, split, num_images, image_size, seed)
    metadata = MetadataCatalog.get(name)
    if not hasattr(metadata, "json_file"):
        metadata.set(json_file=json_path, image_root=image_dir)
    return load_coco_json(json_path, image_dir, name, extra_annotation_keys=["id"])


def register_shapes_datasets(
    root: Optional[str] = None,
    num_train: int = NUM_TRAIN_IMAGES,
    num_val: int = NUM_VAL_IMAGES,
    image_size: int = IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
    prefix: str = "shapes",
) -> Tuple[str, str]:
    """Register ``<prefix>_train`` / ``<prefix>_val`` in Detectron2's catalogs.

    Like ``register_coco_instances``, but the split is generated on first
    ``DatasetCatalog.get``. Without ``root``, the location (:func:`shapes_root`) is resolved at
    that first load, so registering reads no environment and touches no disk; the metadata
    ``json_file`` / ``image_root`` are set then. Names that are already registered are left
    alone. Returns the two names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    num_train = _check_int("num_train", num_train, 1)
    num_val = _check_int("num_val", num_val, 1)
    image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    seed = _check_int("seed", seed, 0)
    root = os.path.abspath(os.fspath(root)) if root else None
    names = []
    for split, num in (("train", num_train), ("val", num_val)):
        name = f"{prefix}_{split}"
        names.append(name)
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(
            name, functools.partial(_load_split, name, root, split, num, image_size, seed)
        )
        if root:
            json_path, image_dir = _paths(root, split)
            MetadataCatalog.get(name).set(json_file=json_path, image_root=image_dir)
        MetadataCatalog.get(name).set(
            evaluator_type="coco",
            thing_classes=list(SHAPES_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPES_CLASSES))},
        )
    return tuple(names)


# ----------------------------------------------------------------------------- CLI
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="output dir (default: <datasets>/shapes)")
    parser.add_argument("--num-train", type=int, default=NUM_TRAIN_IMAGES)
    parser.add_argument("--num-val", type=int, default=NUM_VAL_IMAGES)
    parser.add_argument("--size", type=int, default=IMAGE_SIZE, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    root = args.root or shapes_root()
    for split, num in (("train", args.num_train), ("val", args.num_val)):
        start = time.perf_counter()
        try:
            json_path, image_dir = generate_shapes_dataset(root, split, num, args.size, args.seed)
        except (TypeError, ValueError) as e:
            message = str(e).replace("num_images", f"--num-{split}")
            parser.error(message.replace("image_size", "--size"))
        print(
            f"{split}: {num} images in {image_dir}, annotations {json_path} "
            f"({time.perf_counter() - start:.1f}s)"
        )


if __name__ == "__main__":
    main()
