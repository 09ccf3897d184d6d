"""Checking dataset records before training or evaluation starts.

:func:`validate_dataset_dicts` reads every record of a Detectron2 dataset once (image headers
only, no decoding) and either repairs what can be repaired, with a warning naming the image
and the annotation, or stops with one error listing every record that cannot be used, naming
the file and the field. Problems therefore surface in seconds, not hours into a run.

Repaired, with a warning (the sample still trains):

* a polygon part with fewer than 3 points or non-finite coordinates is removed; an annotation
  left without any part is dropped (self-intersecting polygons and parts outside the image are
  valid: they rasterise to what they cover);
* an RLE mask whose size differs from the image's, or an annotation without segmentation, is
  dropped (SOLO trains on masks);
* a box with NaN / infinite coordinates is replaced by the bounds of its polygons (dropped when
  there are none); boxes partly outside the image are clipped later by Detectron2, as usual.

Errors (training does not start):

* ``file_name`` missing, unreadable or not an image, or a 16-bit single-channel image (which
  Detectron2 would clip to white when reading it as 8-bit RGB);
* ``height`` / ``width`` different from the image's (after its EXIF rotation);
* ``category_id`` outside the model's classes;
* RLE masks with ``INPUT.MASK_FORMAT "polygon"`` (Detectron2 needs ``"bitmask"`` for them).
"""

import copy
import logging
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

from PIL import Image

__all__ = [
    "DatasetError",
    "image_size_on_disk",
    "validate_dataset_dicts",
    "clean_coco_ground_truth",
]

logger = logging.getLogger(__name__)

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_MAX_LISTED = 20  # problems listed in full per kind; the rest are counted


class DatasetError(ValueError):
    """Dataset records that cannot be used; the message lists them (file and field)."""


def image_size_on_disk(path: str) -> Tuple[int, int, bool]:
    """(height, width, rotated) of an image file as Detectron2 reads it (EXIF orientation
    applied), from its header only. Raises OSError for a missing file, a non-image or a 16-bit
    single-channel image."""
    with Image.open(path) as image:
        width, height = image.size
        if image.mode.startswith("I"):
            raise OSError(
                f"it is a {image.mode} (16/32-bit single-channel) image, which Detectron2 clips "
                "when reading it as 8-bit: convert it to 8 bits"
            )
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION)
        except Exception:  # a broken EXIF block: Detectron2 ignores it too
            orientation = None
    rotated = orientation in _TRANSPOSED_ORIENTATIONS
    return (width, height, True) if rotated else (height, width, False)


def _describe(record: Dict) -> str:
    return f"image_id {record.get('image_id', '?')} ({record.get('file_name', '?')})"


def _annotation_name(annotation: Dict, index: int) -> str:
    return f"annotation id {annotation['id']}" if "id" in annotation else f"annotation #{index}"


def _finite(values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _clean_polygons(polygons: List) -> Tuple[List, int]:
    """Parts with >= 3 points and finite coordinates; returns (kept parts, removed count)."""
    kept = [p for p in polygons if len(p) >= 6 and len(p) % 2 == 0 and _finite(p)]
    return kept, len(polygons) - len(kept)


def _polygon_bounds(polygons: List) -> List[float]:
    xs = [x for p in polygons for x in p[0::2]]
    ys = [y for p in polygons for y in p[1::2]]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


class _Checker:
    def __init__(self, dataset_name: str, num_classes: Optional[int], mask_format: str):
        self.dataset_name = dataset_name
        self.num_classes = num_classes
        self.mask_format = mask_format
        self.errors: List[str] = []
        self.warnings: Counter = Counter()

    def warn(self, kind: str, message: str):
        self.warnings[kind] += 1
        if self.warnings[kind] <= _MAX_LISTED:
            logger.warning("dataset %r: %s", self.dataset_name, message)

    def check_file(self, record: Dict, size_on_disk) -> None:
        if isinstance(size_on_disk, Exception):
            self.errors.append(
                f"{_describe(record)}: file_name cannot be read as an image ({size_on_disk})"
            )
            return
        height, width, rotated = size_on_disk
        expected = (record.get("height"), record.get("width"))
        if None not in expected and tuple(expected) != (height, width):
            how = " after its EXIF rotation" if rotated else ""
            self.errors.append(
                f"{_describe(record)}: height/width are {expected[0]}x{expected[1]} in the "
                f"annotations but the image is {height}x{width}{how}"
            )

    def clean_annotation(self, record: Dict, annotation: Dict, index: int) -> Optional[Dict]:
        """The usable annotation (repaired when possible), or None to drop it."""
        where = f"{_describe(record)}, {_annotation_name(annotation, index)}"
        category = annotation.get("category_id")
        if self.num_classes is not None and not (
            isinstance(category, int) and 0 <= category < self.num_classes
        ):
            self.errors.append(
                f"{where}: category_id {category!r} is outside the model's {self.num_classes} "
                "classes (MODEL.SOLO.NUM_CLASSES)"
            )
            return None
        if annotation.get("iscrowd", 0):
            return annotation  # Detectron2 leaves crowd regions out of training
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, dict):
            size = list(segmentation.get("size", []))
            if size != [record.get("height"), record.get("width")]:
                self.warn(
                    "rle",
                    f"{where}: dropped, its RLE mask is {size} for a "
                    f"{record.get('height')}x{record.get('width')} image",
                )
                return None
            if self.mask_format == "polygon":
                self.errors.append(
                    f"{where}: segmentation is an RLE mask, which INPUT.MASK_FORMAT 'polygon' "
                    "cannot read: set INPUT.MASK_FORMAT bitmask"
                )
                return None
        elif isinstance(segmentation, list) and segmentation:
            kept, removed = _clean_polygons(segmentation)
            if not kept:
                self.warn("polygon", f"{where}: dropped, no polygon has 3 finite points")
                return None
            if removed:
                self.warn(
                    "polygon",
                    f"{where}: {removed} polygon part(s) with fewer than 3 "
                    "finite points removed",
                )
                annotation = dict(annotation, segmentation=kept)
        else:
            self.warn("no_mask", f"{where}: dropped, it has no segmentation (SOLO needs masks)")
            return None
        box = annotation.get("bbox")
        if box is None or len(box) != 4 or not _finite(box):
            if isinstance(annotation["segmentation"], list):
                self.warn("box", f"{where}: bbox {box} replaced by the bounds of its polygons")
                return dict(annotation, bbox=_polygon_bounds(annotation["segmentation"]))
            self.warn("box", f"{where}: dropped, bbox {box} is not 4 finite numbers")
            return None
        return annotation

    def finish(self, num_records: int):
        if self.errors:
            shown = "\n  ".join(self.errors[:_MAX_LISTED])
            more = len(self.errors) - _MAX_LISTED
            raise DatasetError(
                f"dataset {self.dataset_name!r}: {len(self.errors)} problem(s) found before "
                f"starting:\n  {shown}" + (f"\n  ... and {more} more" if more > 0 else "")
            )
        if self.warnings:
            logger.warning(
                "dataset %r: %d records checked; repaired or dropped: %s",
                self.dataset_name,
                num_records,
                dict(self.warnings),
            )


def validate_dataset_dicts(
    dicts: List[Dict],
    dataset_name: str,
    num_classes: Optional[int] = None,
    mask_format: str = "polygon",
    check_files: bool = True,
    threads: int = 8,
) -> List[Dict]:
    """Check (and repair) Detectron2 dataset records; see the module docstring.

    Args:
        dicts: records as ``DatasetCatalog.get`` returns them (not modified).
        num_classes: the model's class count (category ids must be below it), or None.
        mask_format: ``INPUT.MASK_FORMAT``.
        check_files: read every image header (file exists, is an image, has the annotated size).
    Returns:
        The records to use: copies where annotations were repaired or dropped.
    Raises:
        DatasetError: listing every record that cannot be used.
    """
    checker = _Checker(dataset_name, num_classes, mask_format)
    if check_files:

        def read(record):
            try:
                return image_size_on_disk(record["file_name"])
            except (OSError, KeyError, ValueError, SyntaxError) as e:
                return e

        with ThreadPoolExecutor(threads) as pool:
            sizes = list(pool.map(read, dicts))
        for record, size in zip(dicts, sizes):
            checker.check_file(record, size)
    cleaned = []
    for record in dicts:
        annotations = record.get("annotations")
        if annotations is None:
            cleaned.append(record)
            continue
        kept = [
            a
            for a in (checker.clean_annotation(record, ann, i) for i, ann in enumerate(annotations))
            if a is not None
        ]
        same = len(kept) == len(annotations) and all(a is b for a, b in zip(kept, annotations))
        cleaned.append(record if same else dict(copy.copy(record), annotations=kept))
    checker.finish(len(dicts))
    return cleaned


def clean_coco_ground_truth(coco_api, dataset_name: str) -> int:
    """Apply the polygon repairs of :func:`validate_dataset_dicts` to a pycocotools ``COCO``
    ground truth (in place), so that evaluation scores against the annotations training used:
    polygon parts with fewer than 3 points or non-finite coordinates are removed (pycocotools
    cannot rasterise them and would fail mid-evaluation), annotations left without any part are
    dropped. Returns the number of annotations changed or dropped; logs one warning naming them.
    """
    kept, changed = [], []
    for annotation in coco_api.dataset.get("annotations", []):
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, list):
            parts, removed = _clean_polygons(segmentation)
            if removed:
                changed.append(f"image_id {annotation.get('image_id')} id {annotation.get('id')}")
                if not parts:
                    continue
                annotation = dict(annotation, segmentation=parts)
        kept.append(annotation)
    if changed:
        coco_api.dataset["annotations"] = kept
        coco_api.createIndex()
        listed = ", ".join(changed[:_MAX_LISTED])
        more = f" and {len(changed) - _MAX_LISTED} more" if len(changed) > _MAX_LISTED else ""
        logger.warning(
            "dataset %r, evaluation ground truth: polygon parts with fewer than 3 finite points "
            "removed (annotations without any part dropped), as in training: %s%s",
            dataset_name,
            listed,
            more,
        )
    return len(changed)
