"""The synthetic instance-segmentation datasets ("shapes") as COCO files: generated once,
deterministically, and registered in Detectron2's catalogs (the images are rendered by
:mod:`solo_d2.data.shapes_render`).

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
import os
import shutil
import tempfile
import time
from typing import Optional, Tuple

import cv2

from .shapes_render import (
    IMAGE_SIZE,
    LAYOUTS,
    MIN_IMAGE_SIZE,
    MIN_VISIBLE_AREA,
    SHAPES_CLASSES,
    ShapeInstance,
    ShapesImage,
    ShapesLayout,
    check_int,
    check_split,
    mask_to_polygons,
    render_shapes_image,
)

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
    "LAYOUTS",
    "MIN_IMAGE_SIZE",
    "MIN_VISIBLE_AREA",
    "ShapeInstance",
    "ShapesImage",
    "ShapesLayout",
    "render_shapes_image",
    "mask_to_polygons",
    "generate_shapes_dataset",
    "default_datasets_root",
    "shapes_root",
    "register_shapes_datasets",
]

NUM_TRAIN_IMAGES = 300
NUM_VAL_IMAGES = 50
DEFAULT_SEED = 0
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- dataset files
def _generation_params(split, num_images, image_size, seed, layout):
    params = {
        "generator": "solo_d2.data.shapes",
        "format_version": FORMAT_VERSION,
        "split": split,
        "num_images": num_images,
        "image_size": image_size,
        "seed": seed,
        "classes": list(SHAPES_CLASSES),
    }
    if layout != "default":  # default datasets keep the parameters (and files) they had
        params["layout"] = layout
    return params


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
        sample = render_shapes_image(
            params["seed"], params["split"], index, size, params.get("layout", "default")
        )
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
    layout: str = "default",
) -> Tuple[str, str]:
    """Generate (or reuse) one split under ``root``; returns ``(json_path, image_dir)``.
    ``layout``: how many shapes and how large (:data:`~.shapes_render.LAYOUTS`).

    Output is byte-identical for identical arguments. An existing dataset generated with the
    same parameters is reused. Images are rendered into a temporary directory that is renamed
    into place, and the json is written last, so an interrupted or concurrent run never leaves
    a dataset that looks complete but is not.
    """
    split = check_split(split)
    num_images = check_int("num_images", num_images, 1)
    image_size = check_int("image_size", image_size, MIN_IMAGE_SIZE)
    seed = check_int("seed", seed, 0)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown shapes layout {layout!r}, use one of {sorted(LAYOUTS)}")
    if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
        raise ValueError(f"root must be a non-empty path, got {root!r}")
    root = os.path.abspath(os.fspath(root))
    params = _generation_params(split, num_images, image_size, seed, layout)
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


def shapes_root(datasets_root: Optional[str] = None, prefix: str = "shapes") -> str:
    """Directory of a shapes dataset: ``<datasets root>/<prefix>`` (``shapes``,
    ``shapes_dense``)."""
    return os.path.join(datasets_root or default_datasets_root(), prefix)


def _load_split(name, root, prefix, split, num_images, image_size, seed, layout):
    """Generate (first time) and load a split; a lazily registered root is resolved now."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    root = root or shapes_root(prefix=prefix)
    json_path, image_dir = generate_shapes_dataset(
        root, split, num_images, image_size, seed, layout
    )
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
    layout: str = "default",
) -> Tuple[str, str]:
    """Register ``<prefix>_train`` / ``<prefix>_val`` in Detectron2's catalogs, images of
    ``layout`` (:data:`~.shapes_render.LAYOUTS`), in ``root`` or ``<datasets root>/<prefix>``.

    Like ``register_coco_instances``, but the split is generated on first
    ``DatasetCatalog.get``. Without ``root``, the location (:func:`shapes_root`) is resolved at
    that first load, so registering reads no environment and touches no disk; the metadata
    ``json_file`` / ``image_root`` are set then. Names that are already registered are left
    alone. Returns the two names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    num_train = check_int("num_train", num_train, 1)
    num_val = check_int("num_val", num_val, 1)
    image_size = check_int("image_size", image_size, MIN_IMAGE_SIZE)
    seed = check_int("seed", seed, 0)
    root = os.path.abspath(os.fspath(root)) if root else None
    names = []
    for split, num in (("train", num_train), ("val", num_val)):
        name = f"{prefix}_{split}"
        names.append(name)
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(
            name,
            functools.partial(
                _load_split, name, root, prefix, split, num, image_size, seed, layout
            ),
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
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="default")
    args = parser.parse_args(argv)
    root = args.root or shapes_root(prefix="shapes" if args.layout == "default" else "shapes_dense")
    for split, num in (("train", args.num_train), ("val", args.num_val)):
        start = time.perf_counter()
        try:
            json_path, image_dir = generate_shapes_dataset(
                root, split, num, args.size, args.seed, args.layout
            )
        except (TypeError, ValueError) as e:
            message = str(e).replace("num_images", f"--num-{split}")
            parser.error(message.replace("image_size", "--size"))
        print(
            f"{split}: {num} images in {image_dir}, annotations {json_path} "
            f"({time.perf_counter() - start:.1f}s)"
        )


if __name__ == "__main__":
    main()
