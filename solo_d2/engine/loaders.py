"""Data loaders of the SOLO trainer: checked records, a robust mapper, a resumable sampler."""

import itertools
import logging
from typing import Dict, List

from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.samplers import TrainingSampler

from ..data import SOLODatasetMapper, validate_dataset_dicts

__all__ = ["ResumableTrainingSampler", "build_test_loader", "build_train_loader", "train_records"]

logger = logging.getLogger(__name__)


class ResumableTrainingSampler(TrainingSampler):
    """Detectron2's ``TrainingSampler`` that can start part-way through its index stream.

    ``start`` indices of this process's share of the stream are skipped, so a run resumed at
    iteration k with ``start = k * images per process`` reads exactly the images the
    uninterrupted run would have read (same seed, same number of processes).
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int = None, start: int = 0):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start = start

    def __iter__(self):
        first = self._rank + self.start * self._world_size
        yield from itertools.islice(self._infinite_indices(), first, None, self._world_size)


def train_records(cfg) -> List[Dict]:
    """The training records of ``cfg.DATASETS.TRAIN``, checked and repaired
    (:func:`solo_d2.data.validate_dataset_dicts`)."""
    records = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    return validate_dataset_dicts(
        records, "+".join(cfg.DATASETS.TRAIN), cfg.MODEL.SOLO.NUM_CLASSES, cfg.INPUT.MASK_FORMAT
    )


def build_train_loader(cfg, records: List[Dict], sampler_seed: int, start_iter: int = 0):
    """Training loader over ``records`` with :class:`SOLODatasetMapper`; with the default
    ``TrainingSampler``, a :class:`ResumableTrainingSampler` that starts at ``start_iter``."""
    sampler = None
    if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
        from detectron2.utils import comm

        per_process = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        sampler = ResumableTrainingSampler(
            len(records), seed=sampler_seed, start=start_iter * per_process
        )
    elif start_iter:
        logger.warning(
            "DATALOADER.SAMPLER_TRAIN %s starts its stream from the beginning on resume",
            cfg.DATALOADER.SAMPLER_TRAIN,
        )
    return build_detection_train_loader(
        cfg,
        mapper=SOLODatasetMapper(cfg, True, fallback_records=records),
        dataset=records,
        sampler=sampler,
    )


def build_test_loader(cfg, dataset_name: str):
    """Test loader of one dataset: checked records and :class:`SOLODatasetMapper`."""
    records = validate_dataset_dicts(
        DatasetCatalog.get(dataset_name),
        dataset_name,
        cfg.MODEL.SOLO.NUM_CLASSES,
        cfg.INPUT.MASK_FORMAT,
    )
    return build_detection_test_loader(records, mapper=SOLODatasetMapper(cfg, False))
