"""The dataset mapper of SOLO training and evaluation: Detectron2's, made robust to images that
cannot be decoded (a truncated file passes the header check of :mod:`.validation`)."""

import logging
import zlib
from typing import Dict, List, Optional

import numpy as np
import torch

from detectron2.data import DatasetMapper

from .augmentation import build_extra_train_augmentations

__all__ = ["SOLODatasetMapper"]

logger = logging.getLogger(__name__)

# What reading or decoding a damaged file raises (PIL: OSError / SyntaxError; Detectron2's size
# check: a ValueError subclass).
_READ_ERRORS = (OSError, SyntaxError, ValueError)


class SOLODatasetMapper(DatasetMapper):
    """``DatasetMapper`` that does not stop a run on an image it cannot read, with solo_d2's
    extra training augmentations (:func:`.augmentation.build_extra_train_augmentations`) after
    Detectron2's when built from a config.

    Training: the sample is replaced by another record of ``fallback_records`` (the next one
    that can be read, starting at a position derived from the file name, so the choice is
    deterministic), with one warning per unreadable file. Evaluation: the image is replaced by
    a black one of the annotated size, so it gets no detection and the evaluation completes.

    Args:
        fallback_records: the training records (training only).
        Other arguments: as ``DatasetMapper`` (e.g. ``SOLODatasetMapper(cfg, is_train)``).
    """

    def __init__(self, *args, fallback_records: Optional[List[Dict]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fallback_records = fallback_records or []
        self.unreadable = set()

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        args = super().from_config(cfg, is_train)
        if is_train:
            args["augmentations"] = args["augmentations"] + build_extra_train_augmentations(cfg)
        return args

    def __call__(self, dataset_dict):
        name = dataset_dict.get("file_name")
        if name not in self.unreadable:
            try:
                return super().__call__(dataset_dict)
            except _READ_ERRORS as e:
                self.unreadable.add(name)
                what = "another image is used" if self.is_train else "evaluated as a black image"
                logger.warning("%s cannot be read (%s): %s", name, e, what)
        if self.is_train:
            return self._fallback(name)
        height, width = dataset_dict["height"], dataset_dict["width"]
        blank = dict(dataset_dict, image=torch.as_tensor(np.zeros((3, height, width), np.uint8)))
        blank.pop("annotations", None)
        return blank

    def _fallback(self, name: str):
        count = len(self.fallback_records)
        start = zlib.crc32(str(name).encode()) % max(count, 1)
        for offset in range(1, count + 1):
            candidate = self.fallback_records[(start + offset) % count]
            if candidate.get("file_name") not in self.unreadable:
                return self(candidate)
        raise OSError(f"no training image can be read (the last one tried: {name})")
