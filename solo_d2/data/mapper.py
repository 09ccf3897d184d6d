"""The dataset mapper of SOLO training and evaluation: Detectron2's, made robust to images that
cannot be decoded (a truncated file passes the header check of :mod:`.validation`)."""

import logging

import numpy as np
import torch

from detectron2.data import DatasetMapper

__all__ = ["SOLODatasetMapper"]

logger = logging.getLogger(__name__)

# What reading or decoding a damaged file raises (PIL: OSError / SyntaxError; Detectron2's size
# check: a ValueError subclass).
_READ_ERRORS = (OSError, SyntaxError, ValueError)


class SOLODatasetMapper(DatasetMapper):
    """``DatasetMapper`` that does not stop a run on an image it cannot read.

    Training: the sample is skipped with a warning naming the file (Detectron2's ``MapDataset``
    then takes another image). Evaluation: the image is replaced by a black one of the annotated
    size with a warning, so it gets no detection and the evaluation completes.
    """

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except _READ_ERRORS as e:
            name = dataset_dict.get("file_name")
            if self.is_train:
                logger.warning("Skipping %s in this batch, it cannot be read: %s", name, e)
                return None
            logger.warning("Evaluating %s as a black image, it cannot be read: %s", name, e)
            height, width = dataset_dict["height"], dataset_dict["width"]
            blank = dict(
                dataset_dict, image=torch.as_tensor(np.zeros((3, height, width), np.uint8))
            )
            blank.pop("annotations", None)
            return blank
