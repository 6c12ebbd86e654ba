"""The GPU check's measurements: a timed slice of one training run, built by the harness.

Everything a run trains with comes from the harness itself: ``benchmark.run.compose`` (the
Hydra config), ``benchmark.data.register_split``, ``benchmark.config.build_d2_cfg`` (the zoo
config + the run's deltas) and ``benchmark.engine.Trainer`` (its mapper, step timer and
hooks), ``benchmark.engine.predict`` for inference and ``reset_peak_memory``/``peak_memory``.
What differs from a real run, and why:

* the weights: the paper starts from zoo checkpoints, which cannot travel to an offline GPU
  machine (hundreds of MB each). A random init with the zoo configs' frozen BatchNorm
  diverges at once, so ``calibrate_frozen_bn`` sets every FrozenBatchNorm2d's statistics
  from one real batch (a data-dependent init). The model is then the zoo's, layer for layer
  (FrozenBN, FREEZE_AT 2), and trains at the same cost per iteration;
* no checkpoints are written (``TimingTrainer``) and the loop can stop at a wall-clock
  deadline (``run_iterations``), so packed runs are timed over one common window.

Times are seconds; memory MiB (GPU: torch.cuda.max_memory_allocated / _reserved; CPU: the
process's peak RSS).
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

CONVERT_CFG = {"slice_random": {"enabled": False}}


def quiet_detectron2() -> None:
    """Keep detectron2's INFO chatter (the model printout for each of 18 trainers) off the
    console: DefaultTrainer installs its own handlers unless the logger is already enabled
    for INFO, and with no handler INFO records never reach Python's last-resort handler."""
    logging.getLogger("detectron2").setLevel(logging.INFO)
    logging.getLogger("fvcore").setLevel(logging.WARNING)
    # deprecation notes of torch APIs detectron2 v0.6 calls (torch.cuda.amp, jit.script):
    # one per process, 10 processes -> noise around the figures
    warnings.filterwarnings("ignore", category=FutureWarning)


def make_dataset(root: Path, size: int, n_cases: int, slices: int, workers: int = 1) -> Path:
    """Generate the phantom (``n_cases`` cases of ``size`` x ``size`` x ``slices``) and
    convert it (patient k-fold with k = n_cases: fold 0 tests one case). Returns the dataset dir."""
    from converters import phantom
    from converters.convert import convert

    raw = phantom.generate(root / f"raw{size}", preset="tiny", seed=0, n_cases=n_cases,
                           size=size, slices=slices)
    cfg = {"workers": workers, "splits": {"patient_kfold": {"k": n_cases}, **CONVERT_CFG}}
    return convert(raw, root / f"data{size}", cfg)


def build_cfg(dataset: Path, backbone: str, solver: str, *, amp: bool, device: str,
              out_dir: Path, max_iter: int, num_workers: int | None = None,
              extra: tuple[str, ...] = ()):
    """detectron2 CfgNode of one run cell, exactly as ``benchmark.run`` builds it (weights
    group ``zoo``: the zoo config's FrozenBN and FREEZE_AT; no weights file). Returns
    (d2cfg, train Split, test Split, hydra cfg)."""
    from benchmark import config as C
    from benchmark import data as D
    from benchmark.run import compose

    train = D.register_split(dataset, "patient_kfold", 0, "train")
    test = D.register_split(dataset, "patient_kfold", 0, "test")
    overrides = [f"dataset_dir={dataset}", f"backbone={backbone}", f"solver={solver}",
                 "weights=zoo", f"amp={str(bool(amp)).lower()}", f"device={device}",
                 f"solver.max_iter={max_iter}", f"solver.checkpoint_period={max_iter + 1}",
                 *extra]
    if num_workers is not None:
        overrides.append(f"solver.num_workers={num_workers}")
    cfg = compose(overrides)
    d2 = C.build_d2_cfg(cfg, train_name=train.name, test_name=test.name, output_dir=str(out_dir),
                        weights_file="", device=C.resolve_device(device), image_hw=train.image_hw)
    return d2, train, test, cfg


def timing_trainer_class():
    """``benchmark.engine.Trainer`` without checkpoint writing (a timing slice keeps nothing)."""
    from detectron2.engine import hooks

    from benchmark.engine import Trainer

    class TimingTrainer(Trainer):
        def build_hooks(self):
            return [h for h in super().build_hooks()
                    if not isinstance(h, hooks.PeriodicCheckpointer)]

    return TimingTrainer


def calibrate_frozen_bn(model, batch) -> int:
    """Set each FrozenBatchNorm2d's running mean/var to the per-channel mean/var of its input
    on ``batch`` (one forward pass, in network order, so each layer sees already-normalised
    inputs). Returns how many layers were set. Weight/bias stay 1/0: every frozen BN then
    outputs zero-mean, unit-variance channels, as a trained one roughly does."""
    import torch
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.utils.events import EventStorage

    def pre_hook(module, args):
        x = args[0].detach().float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)).clamp_min(1e-3))

    layers = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    handles = [m.register_forward_pre_hook(pre_hook) for m in layers]
    try:
        with torch.no_grad(), EventStorage(0):  # the RPN/RoI heads log into a storage
            model(batch)  # training mode: RPN + RoI heads (C4's res5 included) run too
    finally:
        for h in handles:
            h.remove()
    return len(layers)


def run_iterations(trainer, warmup: int, keep_going: Callable[[int], bool],
                   on_warm: Callable[[], None] | None = None) -> list[float]:
    """Drive ``trainer`` like detectron2's TrainerBase.train (EventStorage, every hook's
    before/after calls) for ``warmup`` iterations, call ``on_warm``, then go on while
    ``keep_going(n_timed_so_far)`` and below SOLVER.MAX_ITER. Returns the StepTimer's
    seconds of the iterations after the warm-up."""
    from detectron2.utils.events import EventStorage

    trainer.iter = trainer.start_iter = 0
    with EventStorage(0) as storage:
        trainer.storage = storage
        trainer.before_train()
        try:
            i = 0
            while i < trainer.max_iter:
                if i == warmup and on_warm is not None:
                    on_warm()
                if i >= warmup and not keep_going(i - warmup):
                    break
                trainer.iter = i
                trainer.before_step()
                trainer.run_step()
                trainer.after_step()
                i += 1
            trainer.iter = i
        finally:
            trainer.after_train()
    return list(trainer.step_timer.times[warmup:])


def _memory() -> dict:
    import torch

    from benchmark.engine import peak_memory

    pm = peak_memory()
    if torch.cuda.is_available():
        return {"peak_mb": pm["peak_gpu_mb"],
                "reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
                "peak_rss_mb": pm["peak_rss_mb"]}
    return {"peak_mb": pm["peak_rss_mb"], "reserved_mb": None, "peak_rss_mb": pm["peak_rss_mb"]}


def _release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_slice(d2cfg, *, warmup: int, iters: int, window_s: float, seed: int = 0,
                on_warm: Callable[[], float] | None = None, infer_test: str | None = None,
                infer_out: Path | None = None, infer_batch: int = 1) -> dict:
    """Build a trainer for ``d2cfg``, calibrate its frozen BN, train ``warmup`` iterations,
    then time up to ``iters`` iterations or ``window_s`` seconds (at least 2 iterations).
    ``on_warm``: called after the warm-up; returns the wall-clock deadline (time.time()) of
    the timed part (packing: one common window), overriding ``window_s``.
    ``infer_test``: a registered test split to time inference on afterwards (fp32 only): one
    image at a time, then (``infer_batch`` > 1) ``infer_batch`` per pass, as the harness's
    ``infer_batch_size=auto`` does on CUDA: one pass to warm up, the next timed.

    Returns {s_per_iter (median), iters_timed, setup_s (build + calibration + the warm-up's
    excess over steady iterations: what a run pays once), infer_s_per_image, infer_images,
    infer_batched_s_per_image, infer_peak_mb, infer_reserved_mb (the batched passes; absent
    unless infer_batch > 1), peak_mb, reserved_mb, peak_rss_mb (training)}."""
    from detectron2.utils.env import seed_all_rng

    from benchmark.engine import Progress, predict, reset_peak_memory

    _release()
    reset_peak_memory()
    seed_all_rng(seed)
    t0 = time.perf_counter()
    trainer = timing_trainer_class()(d2cfg)
    batch = next(trainer._trainer._data_loader_iter)  # SimpleTrainer's own loader iterator
    calibrate_frozen_bn(trainer.model, batch)
    deadline = {"t": None}
    warm_at = {"t": None}

    def warm() -> None:
        warm_at["t"] = time.perf_counter()  # before any barrier wait
        deadline["t"] = on_warm() if on_warm is not None else time.time() + window_s

    def keep_going(n: int) -> bool:
        return n < 2 or (n < iters and time.time() < deadline["t"])

    warmup = max(1, warmup)
    times = run_iterations(trainer, warmup, keep_going, warm)
    if not times:
        raise RuntimeError("no timed iterations: SOLVER.MAX_ITER <= warm-up")
    s_per_iter = statistics.median(times)
    # what a run pays once: build + calibration + the warm-up's excess over steady iterations
    setup_s = max(0.0, warm_at["t"] - t0 - warmup * s_per_iter)
    out = {"s_per_iter": s_per_iter, "iters_timed": len(times), "setup_s": setup_s,
           "infer_s_per_image": None, "infer_images": 0, "infer_batched_s_per_image": None}
    out.update(_memory())  # the training peak (inference below adds little)
    if infer_test is not None:
        target = infer_out or Path(d2cfg.OUTPUT_DIR) / "predictions.json"
        pred = predict(trainer.model, d2cfg, infer_test, target, Progress())
        infer = pred["infer_times"]
        # the first image pays one-off costs (loader start, kernel choice): left out
        out["infer_s_per_image"] = statistics.median(infer[1:] or infer) if infer else None
        out["infer_images"] = len(pred["infer_times"])
        if infer_batch > 1 and infer:
            reset_peak_memory()  # the batched passes' own peak (C4: all proposals through res5)
            for _ in range(2):  # the first pass pays one-off costs (allocator growth, new shapes)
                pred = predict(trainer.model, d2cfg, infer_test, target, Progress(),
                               batch_size=infer_batch)
            n = sum(pred["infer_batches"])
            out["infer_batched_s_per_image"] = sum(
                t * k for t, k in zip(pred["infer_times"], pred["infer_batches"])) / n
            out["infer_oom_batches"] = pred["oom_batches"]
            out.update({f"infer_{k}": v for k, v in _memory().items() if k != "peak_rss_mb"})
    del trainer, batch
    _release()
    return out


def loader_profile(d2cfg, train_name: str, n: int = 20) -> dict:
    """Cost of feeding one training image, in this process on one core: the harness's train
    mapper (``benchmark.data.build_mapper``: read + resize + masks -> tensors) against its
    cacheable parts, the PNG decode (``read_image``) and the RLE decode of every instance mask.
    Seconds per image, means over ``n`` images (cycled if the split has fewer)."""
    import copy

    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image
    from pycocotools import mask as mask_utils

    from benchmark.data import build_mapper

    dicts = DatasetCatalog.get(train_name)
    items = [dicts[i % len(dicts)] for i in range(n)]
    mapper = build_mapper(d2cfg, is_train=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one DataLoader worker's share
    try:
        mapper(copy.deepcopy(items[0]))  # first-call costs (imports, caches)
        t0 = time.perf_counter()
        for d in items:
            mapper(copy.deepcopy(d))
        t_map = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for d in items:
            read_image(d["file_name"], format=d2cfg.INPUT.FORMAT)
        t_png = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for d in items:
            for a in d["annotations"]:
                mask_utils.decode(a["segmentation"])
        t_rle = (time.perf_counter() - t0) / n
    finally:
        torch.set_num_threads(threads)
    return {"mapper_s_per_image": t_map, "png_decode_s_per_image": t_png,
            "rle_decode_s_per_image": t_rle, "images": n,
            "cacheable_share": (t_png + t_rle) / t_map if t_map else None}


def env_facts(device: str) -> dict:
    """What ran the check (recorded next to the figures)."""
    import platform

    import detectron2
    import torch

    env = {"device": device, "torch": torch.__version__, "detectron2": detectron2.__version__,
           "python": platform.python_version(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "gpu": None}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_total_mb=p.total_memory / 2**20,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   tf32_conv=torch.backends.cudnn.allow_tf32,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return env
