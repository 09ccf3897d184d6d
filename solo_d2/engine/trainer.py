"""The SOLO trainer: Detectron2's ``DefaultTrainer`` with COCO mask + box evaluation, solo_d2's
checkpointer, checked data, exact resume, and DistributedDataParallel on the CPU (gloo) as well
as on CUDA (NCCL)."""

import logging
import weakref

from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import DefaultTrainer
from detectron2.evaluation import verify_results
from detectron2.engine.train_loop import TrainerBase
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

from ..checkpoint import SOLOCheckpointer
from ..evaluation import build_evaluator, summarize_results
from .amp import build_step_trainer
from .hooks import RNGStateHook
from .time_budget import TimeBudget
from .loaders import build_test_loader, build_train_loader, train_records
from .optim import build_optimizer

__all__ = ["Trainer", "create_ddp_model"]

logger = logging.getLogger(__name__)


def create_ddp_model(model, **kwargs):
    """Wrap ``model`` in DistributedDataParallel when there are several processes.

    Like Detectron2's ``create_ddp_model``, but ``device_ids`` is the local rank only for a CUDA
    model: a CPU model (gloo) takes none. ``find_unused_parameters`` keeps DDP's default (False):
    every SOLO head gives every parameter a gradient, also on a process whose images have no
    ground truth or no positive sample (DESIGN.md rule L3).
    """
    if comm.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    if device.type == "cuda" and "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()]
    return DistributedDataParallel(model, **kwargs)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for SOLO.

    * evaluation with :func:`solo_d2.evaluation.build_evaluator`, and one
      ``[solo_d2] <dataset>: mask AP .., box AP ..`` log line per test dataset;
    * checkpoints through :class:`solo_d2.checkpoint.SOLOCheckpointer` (published SOLO layouts,
      safe reading, strict reporting), written by the main process only;
    * DistributedDataParallel on CPU processes too (:func:`create_ddp_model`);
    * dataset records checked before the run starts and images that cannot be decoded skipped
      (:mod:`solo_d2.data.validation`, :class:`solo_d2.data.SOLODatasetMapper`);
    * exact resume: the sampler continues where the checkpoint was written and the random
      generators are restored (:class:`RNGStateHook`); with ``SEED`` >= 0 and
      ``DATALOADER.NUM_WORKERS 0``, N iterations equal N/2 + resume N/2 bit for bit;
    * mixed precision in bfloat16 on the CPU as well (:mod:`.amp`);
    * a wall-clock budget (``SOLVER.TIME_BUDGET_S``, :class:`TimeBudget`) instead of a fixed
      ``SOLVER.MAX_ITER``.

    ``SOLVER.IMS_PER_BATCH`` is the global batch, split over the processes, as in Detectron2.
    """

    def __init__(self, cfg):  # DefaultTrainer.__init__, with the changes above
        TrainerBase.__init__(self)
        # SOLVER.TIME_BUDGET_S counts from here: building the model and the data included
        self._time_budget = TimeBudget(cfg) if cfg.SOLVER.TIME_BUDGET_S > 0 else None
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SOLOCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's SGD, or AdamW with ``SOLVER.OPTIMIZER "AdamW"`` (same parameter groups,
        weight decay and gradient clipping), with fused updates (:mod:`.optim`)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        """Training loader (checked records) starting at iteration ``start_iter``."""
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return build_train_loader(cfg, train_records(cfg), seed, start_iter)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name)

    def build_hooks(self):
        """Detectron2's hooks, the RNG-state hook and, with ``SOLVER.TIME_BUDGET_S``, the
        :class:`TimeBudget` hook first (it moves ``max_iter`` before the others read it)."""
        self._rng_state = RNGStateHook()
        budget = [self._time_budget] if self._time_budget is not None else []
        return budget + super().build_hooks() + [self._rng_state]

    def train(self):
        """``DefaultTrainer.train``, with a loop that reads ``self.max_iter`` at every
        iteration (Detectron2's loop fixes it when it starts), so that :class:`TimeBudget` can
        set the length of the run."""
        logger.info("Starting training from iteration %d", self.start_iter)
        self.iter = self.start_iter
        with EventStorage(self.start_iter) as self.storage:
            try:
                self.before_train()
                while self.iter < self.max_iter:
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    self.iter += 1
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            verify_results(self.cfg, self._last_eval_results)
            return self._last_eval_results

    def state_dict(self):
        """Also the optimizer state (momentum), which Detectron2 0.6's DefaultTrainer leaves out
        of checkpoints (later versions save it the same way)."""
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:  # checkpoints written without it resume without momentum
            self._trainer.load_state_dict(state_dict["_trainer"])

    def resume_or_load(self, resume=True):
        """As ``DefaultTrainer``; when resuming, the data continue where the checkpoint was
        written, with the random generators of that moment."""
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            loader = self.build_train_loader(self.cfg, start_iter=self.start_iter)
            self._trainer.data_loader = loader
            if hasattr(self._trainer, "_data_loader_iter_obj"):  # Detectron2 > 0.6: lazy
                self._trainer._data_loader_iter_obj = None
            else:
                self._trainer._data_loader_iter = iter(loader)
            self._rng_state.restore()  # building the loader drew from the generators

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            summarize_results(results, cfg.DATASETS.TEST)
        return results
