"""Starting the processes of a training or evaluation run, with the backend picked by device.

:func:`launch` has the arguments and semantics of Detectron2's ``launch`` (``--num-gpus``,
``--num-machines``, ``--machine-rank``, ``--dist-url``, ``auto`` for a free local port):

* with CUDA, it *is* Detectron2's ``launch`` (one process per GPU, NCCL);
* without CUDA, it starts the same number of CPU processes with the gloo backend (Detectron2
  v0.6's own ``launch`` refuses to start without CUDA);
* in a process started by ``torchrun`` (``WORLD_SIZE`` etc. in the environment), it joins the
  process group from the environment (``env://``; NCCL with CUDA, else gloo) instead of starting
  processes.

In every case Detectron2's ``comm`` helpers work: the local process group of each machine is
created as Detectron2 does. CPU processes share the machine's cores: each gets
``cores // processes`` torch threads unless ``OMP_NUM_THREADS`` is set (N processes with all
cores each oversubscribe the CPU and run several times slower).
"""

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "launch", "share_cpu_threads", "started_by_torchrun"]

DEFAULT_TIMEOUT = timedelta(minutes=30)
logger = logging.getLogger(__name__)


def started_by_torchrun() -> bool:
    """True in a process that ``torchrun`` started (it sets these variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))


def launch(
    main_func,
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = None,
    args=(),
    timeout: timedelta = DEFAULT_TIMEOUT,
):
    """Run ``main_func(*args)`` in every process of the job (see the module docstring).

    Args:
        num_processes_per_machine: ``--num-gpus``: processes on this machine (GPUs with CUDA).
        num_machines, machine_rank, dist_url: as Detectron2's ``launch``.
    """
    if started_by_torchrun():
        return _join_torchrun_group(main_func, args, timeout)
    if torch.cuda.is_available():
        return detectron2_launch(
            main_func,
            num_processes_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
        )
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works for one machine only; give tcp://HOST:PORT")
        from detectron2.engine.launch import _find_free_port

        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.spawn(
        _cpu_worker,
        nprocs=num_processes_per_machine,
        args=(
            main_func,
            world_size,
            num_processes_per_machine,
            machine_rank,
            dist_url,
            args,
            timeout,
        ),
        daemon=False,
    )


def _cpu_worker(
    local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args, timeout
):
    """One gloo process (Detectron2's ``_distributed_worker`` without the CUDA parts)."""
    rank = machine_rank * num_per_machine + local_rank
    try:
        dist.init_process_group(
            "gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
        )
    except Exception:
        logger.error("Process group URL: %s", dist_url)
        raise
    _create_local_process_group(num_per_machine, machine_rank)
    share_cpu_threads(num_per_machine)
    comm.synchronize()
    main_func(*args)


def _join_torchrun_group(main_func, args, timeout):
    local_rank = int(os.environ["LOCAL_RANK"])
    num_per_machine = int(os.environ["LOCAL_WORLD_SIZE"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method="env://", timeout=timeout)
    _create_local_process_group(num_per_machine, dist.get_rank() // num_per_machine)
    if not torch.cuda.is_available():
        share_cpu_threads(num_per_machine)
    comm.synchronize()
    return main_func(*args)


def share_cpu_threads(num_per_machine: int) -> int:
    """Give this process its share of the machine's cores as torch threads (at least 1), unless
    ``OMP_NUM_THREADS`` says otherwise. Returns the number of threads."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    threads = max(1, cores // num_per_machine)
    torch.set_num_threads(threads)
    return threads


def _create_local_process_group(num_per_machine: int, machine_rank: int):
    """The group of the processes on this machine, where Detectron2's ``comm`` looks for it."""
    if hasattr(comm, "create_local_process_group"):  # Detectron2 > 0.6
        comm.create_local_process_group(num_per_machine)
        return
    num_machines = dist.get_world_size() // num_per_machine
    for i in range(num_machines):  # every process must create every group
        group = dist.new_group(list(range(i * num_per_machine, (i + 1) * num_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
