"""The SOLO trainer: Detectron2's ``DefaultTrainer`` with COCO mask + box evaluation."""

from detectron2.engine import DefaultTrainer
from detectron2.utils import comm

from ..evaluation import build_evaluator, summarize_results

__all__ = ["Trainer"]


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` that evaluates with :func:`solo_d2.evaluation.build_evaluator` and logs
    one ``[solo_d2] <dataset>: mask AP .., box AP ..`` line per test dataset.

    Loading ``MODEL.WEIGHTS`` goes through solo_d2's checkpoint formats (published SOLO
    layouts, safe reading; see :mod:`solo_d2.checkpoint`).
    """

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            summarize_results(results, cfg.DATASETS.TEST)
        return results
