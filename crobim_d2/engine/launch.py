"""``launch`` and DDP wrapping that also run several processes on a CPU-only machine.

Detectron2 v0.6's ``launch`` asserts CUDA for more than one process (NCCL) and its ``create_ddp_model`` passes
``device_ids=[local_rank]``, which DDP rejects for CPU modules. Where CUDA is available these functions defer to
Detectron2; without CUDA, ``num_processes_per_machine`` CPU processes join a ``gloo`` process group.
"""
import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

DEFAULT_TIMEOUT = timedelta(minutes=30)
logger = logging.getLogger(__name__)


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    main_func: Callable,
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_machines * num_processes_per_machine`` processes.

    With CUDA, this is Detectron2's ``launch`` (one process per GPU, NCCL). Without CUDA, each process is a
    CPU worker in a ``gloo`` group and gets ``os.cpu_count() // num_processes_per_machine`` torch threads.
    ``dist_url`` "auto" picks a free local port (single machine only).
    """
    if num_processes_per_machine < 1 or num_machines < 1:
        raise ValueError(
            f"--num-gpus={num_processes_per_machine} and --num-machines={num_machines} must be at least 1."
        )
    world_size = num_machines * num_processes_per_machine
    if torch.cuda.is_available() or world_size == 1:
        d2_launch(main_func, num_processes_per_machine, num_machines, machine_rank, dist_url, args, timeout)
        return
    if dist_url is None or dist_url == "auto":
        if num_machines > 1:
            raise ValueError("--dist-url must name the first machine (tcp://HOST:PORT) in multi-machine jobs.")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.spawn(
        _cpu_worker,
        nprocs=num_processes_per_machine,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


def _cpu_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_processes_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_processes_per_machine))
    rank = machine_rank * num_processes_per_machine + local_rank
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    except Exception:
        logger.error("Process group URL: %s", dist_url)
        raise
    # The group of the ranks on this machine, as Detectron2's launch sets it (comm.get_local_rank reads it).
    for i in range(world_size // num_processes_per_machine):
        ranks = list(range(i * num_processes_per_machine, (i + 1) * num_processes_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """Wrap ``model`` in DDP when there are several processes: on its GPU, or without ``device_ids`` on CPU."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    return DistributedDataParallel(model, **kwargs)
