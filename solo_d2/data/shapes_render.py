"""Rendering of the synthetic shapes images (:mod:`solo_d2.data.shapes` writes them as COCO
datasets).

An image has a textured background and filled shapes of random class, colour, rotation,
position and size; shapes may overlap each other and be cut by the image border, and each
instance is annotated by the polygons of its *visible* part. How many shapes and how large is
a :class:`ShapesLayout`: ``"default"`` (1-8 shapes from a few pixels to most of the image, the
``shapes_*`` datasets) or ``"dense_small"`` (15-30 shapes of 10-20 px, the ``shapes_dense_*``
datasets: crowded small objects, where a grid assignment is hardest).
"""

import math
import re
import zlib
from dataclasses import dataclass, field
from typing import List

import cv2
import numpy as np

__all__ = [
    "LAYOUTS",
    "SHAPES_CLASSES",
    "IMAGE_SIZE",
    "MIN_IMAGE_SIZE",
    "MIN_VISIBLE_AREA",
    "ShapeInstance",
    "ShapesImage",
    "ShapesLayout",
    "check_int",
    "check_split",
    "mask_to_polygons",
    "render_shapes_image",
]

SHAPES_CLASSES = ("circle", "square", "triangle", "star")
IMAGE_SIZE = 256
MIN_IMAGE_SIZE = 32
MIN_VISIBLE_AREA = 4  # instances with fewer visible pixels are not annotated
STAR_INNER_RATIO = 0.45

# Polygon extraction: the mask is upsampled by _UPSAMPLE so that contours (which pass through
# pixel centres) lie within 1/8 px of the true pixel edges; rasterising the polygons with
# pycocotools then reproduces the mask exactly. _APPROX_EPS (upsampled px) drops collinear points.
_UPSAMPLE = 4
_APPROX_EPS = 1.0
_SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class ShapesLayout:
    """How many shapes an image has and how large they are (sqrt of the area, in pixels).

    ``min_shapes`` .. ``max_shapes`` shapes per image; a share ``tiny_fraction`` of them has a
    scale uniform in ``tiny_scale``, the others log-uniform from ``tiny_scale[1]`` to
    ``max_scale_fraction`` x the image size (``tiny_fraction`` 1: all in ``tiny_scale``).
    """

    min_shapes: int
    max_shapes: int
    tiny_fraction: float
    tiny_scale: tuple
    max_scale_fraction: float


LAYOUTS = {
    # 1-8 shapes, 20 % of them tiny (4-8 px), the rest up to 0.9 x the image size
    "default": ShapesLayout(1, 8, 0.2, (4.0, 8.0), 0.9),
    # 15-30 shapes of 10-20 px (at 256 px: like cells in a microscopy image)
    "dense_small": ShapesLayout(15, 30, 1.0, (10.0, 20.0), 0.9),
}


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
def check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_split(split):
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


def render_shapes_image(
    seed: int, split: str, index: int, image_size: int, layout: str = "default"
) -> ShapesImage:
    """Render image ``index`` of ``split`` with the shapes of ``layout`` (:data:`LAYOUTS`);
    depends only on the arguments (not on call order)."""
    seed = check_int("seed", seed, 0)
    split = check_split(split)
    index = check_int("index", index, 0)
    size = check_int("image_size", image_size, MIN_IMAGE_SIZE)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown shapes layout {layout!r}, use one of {sorted(LAYOUTS)}")
    shapes = LAYOUTS[layout]
    rng = _image_rng(seed, split, index)
    canvas = _background(rng, size)

    num = int(rng.integers(shapes.min_shapes, shapes.max_shapes + 1))
    max_scale = shapes.max_scale_fraction * size
    specs = []
    for _ in range(num):
        category_id = int(rng.integers(1, len(SHAPES_CLASSES) + 1))
        if rng.random() < shapes.tiny_fraction:
            scale = rng.uniform(*shapes.tiny_scale)
        else:
            low = math.log(shapes.tiny_scale[1])
            scale = math.exp(rng.uniform(low, math.log(max_scale)))
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
