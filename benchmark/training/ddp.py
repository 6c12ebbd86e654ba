"""Multi-process training (``num_gpus > 1``): one process per GPU, or per CPU slot as a test vehicle.

With CUDA this is detectron2's own ``launch`` (NCCL, one process per GPU). detectron2 v0.6's
``launch`` insists on CUDA and NCCL, so with ``device=cpu`` the harness starts the processes
itself with the gloo backend; everything after the process group is set up (the trainer,
DistributedDataParallel, the sharded train loader) is the same code path a multi-GPU run
takes. The CPU path exists so the multi-process path runs and is tested on machines without
a GPU; it is not a way to train faster.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any, Callable


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(fn: Callable[..., Any], n: int, device: str, args: tuple) -> None:
    """Run ``fn(*args)`` in ``n`` processes of one process group; returns when all are done.
    An exception in any process is raised here."""
    if device == "cuda":
        from detectron2.engine import launch as d2_launch

        d2_launch(fn, n, dist_url="auto", args=args)
        return
    import torch.multiprocessing as mp

    url = f"tcp://127.0.0.1:{_free_port()}"
    mp.start_processes(_cpu_worker, nprocs=n, args=(fn, n, url, args), start_method="spawn",
                       join=True)


def _cpu_worker(rank: int, fn: Callable[..., Any], world_size: int, url: str, args: tuple) -> None:
    """One CPU process: gloo process group, detectron2's local group, then ``fn``."""
    import torch
    import torch.distributed as dist
    from detectron2.engine import defaults
    from detectron2.utils import comm

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))  # the processes share the cores
    dist.init_process_group("gloo", init_method=url, world_size=world_size, rank=rank,
                            timeout=datetime.timedelta(minutes=30))
    comm._LOCAL_PROCESS_GROUP = dist.new_group(list(range(world_size)))  # one machine
    # v0.6's create_ddp_model passes device_ids=[local rank], which a CPU module rejects
    ddp_model = defaults.create_ddp_model

    def create_cpu_ddp_model(model, **kwargs):
        kwargs.setdefault("device_ids", None)
        return ddp_model(model, **kwargs)

    defaults.create_ddp_model = create_cpu_ddp_model
    comm.synchronize()
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()
