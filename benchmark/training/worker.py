"""The process that trains, predicts the test split, scores it in 3-D and measures: the run's
own, or rank r of a multi-process launch (``benchmark.training.ddp``). Run-folder paths below."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.dataset import Dataset
from contracts.fsutil import write_json

D2_DIR = "d2"
PREDICTIONS = f"{D2_DIR}/inference/coco_instances_results.json"
METRICS_LOG = f"{D2_DIR}/metrics.json"
WORKER_OUT = f"{D2_DIR}/lungbench_worker.json"  # rank 0's facts when training runs under launch


@dataclass(frozen=True)
class WorkerJob:
    """What the worker needs, picklable for spawned processes (which register the splits from
    the run's Dataset). ``identity``: the hash every checkpoint carries; ``label``: the
    progress bar's name (None: no bar); ``flops``: count the inference GFLOPs."""

    d2cfg: Any
    dataset: Dataset
    scheme: str
    fold: int
    test_name: str
    run_dir: str
    flops: bool
    seed: int
    infer_batch: int = 1
    identity: str | None = None
    label: str | None = None
    score_thresh: float = 0.5  # Dice's, also the 3-D metrics'


def gpu_memory_sections(train: dict | None, infer: dict | None) -> dict:
    """``memory`` keys from the GPU peaks of training and of inference (engine.gpu_peaks, each
    since its own reset; None without CUDA): ``train_peak_gpu_mb``/``train_reserved_gpu_mb``,
    ``infer_peak_gpu_mb``/``infer_reserved_gpu_mb`` and ``peak_gpu_mb``, the larger allocated
    peak of the two (what it was before they were told apart)."""
    out: dict = {}
    for part, peaks in (("train", train), ("infer", infer)):
        out[f"{part}_peak_gpu_mb"] = peaks["allocated"] if peaks else None
        out[f"{part}_reserved_gpu_mb"] = peaks["reserved"] if peaks else None
    both = [v for v in (out["train_peak_gpu_mb"], out["infer_peak_gpu_mb"]) if v is not None]
    out["peak_gpu_mb"] = max(both) if both else None
    return out


def start_process(job: WorkerJob) -> None:
    """Seed, cuDNN, memory counters; a spawned process also registers the splits and logs."""
    import torch
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    from benchmark.training.data import register_split
    from benchmark.training.engine import reset_peak_memory
    from benchmark.training.logs import route_logs

    # detectron2's default_setup does this; the harness does not call default_setup
    torch.backends.cudnn.benchmark = bool(job.d2cfg.CUDNN_BENCHMARK)
    reset_peak_memory()
    seed_all_rng(job.seed + comm.get_rank())
    if comm.get_world_size() > 1:
        # spawned processes start with empty catalogs: register the splits again
        for part in ("train", "test"):
            register_split(job.dataset, job.scheme, job.fold, part)
        route_logs(Path(job.run_dir) / D2_DIR)


def count_model_gflops(model, job: WorkerJob, notes: list[str]) -> tuple[float | None, list[int] | None]:
    """(GFLOPs, input (H, W)) of one inference on the first test image; None for what was not
    asked for or could not be counted (a note says why: FLOPs never fail a run)."""
    from benchmark.training.data import first_image
    from benchmark.training.engine import count_gflops

    gflops, hw = None, None
    if not job.flops:
        return gflops, hw
    try:
        image = first_image(job.dataset.coco(job.scheme, job.fold, "test"), job.dataset.dir.resolve() / "images")
        hw = list(image.shape[:2])
        gflops = count_gflops(model, image)
    except Exception as e:  # noqa: BLE001 - FLOPs are a nice-to-have, never a failure
        notes.append(f"GFLOPs not counted: {type(e).__name__}: {e}")
    return gflops, hw


def train_worker(job: WorkerJob, progress=None) -> dict:
    """Train + predict + measure in this process. Returns the facts the run records; under a
    multi-process launch rank 0 writes them to WORKER_OUT instead (other ranks return {})."""
    from detectron2.utils import comm

    from benchmark.evaluation.volume3d import evaluate_run
    from benchmark.training.engine import (Progress, count_params_m, gpu_peaks, peak_memory, predict_split,
                                           reset_gpu_peaks, run_training)

    progress = progress or Progress()
    run_dir = Path(job.run_dir)
    start_process(job)
    trained = run_training(job.d2cfg, progress, job.identity, job.label)
    if not comm.is_main_process():
        return {}
    model = trained["model"]
    # training's GPU peak, then inference's on its own (batched C4 inference can need more)
    train_gpu = gpu_peaks()
    reset_gpu_peaks()
    progress.where = "inference"
    pred = predict_split(model, job.d2cfg, job.test_name, run_dir / PREDICTIONS, progress,
                         batch_size=job.infer_batch)
    notes: list[str] = list(trained.get("notes", []))
    memory = peak_memory()  # the backbone's training and inference, before the 3-D evaluation
    memory.update(gpu_memory_sections(train_gpu, gpu_peaks()))
    progress.where = "3-D metrics"
    t3d = time.perf_counter()
    volume3d, notes3d = evaluate_run(model, job.d2cfg, job.dataset, job.scheme, job.fold, pred["predictions"],
                                     job.score_thresh, job.infer_batch)
    notes += notes3d
    eval3d_wall_s = time.perf_counter() - t3d
    progress.where = "measure"
    gflops, hw = count_model_gflops(model, job, notes)
    if pred["oom_batches"]:
        notes.append(f"{pred['oom_batches']} inference batch(es) of {job.infer_batch} ran out of GPU "
                     "memory and ran again one image at a time (infer_batch_size lower avoids it)")
    out = {**{k: trained[k] for k in ("start_iter", "step_times", "train_wall_s", "train_started_at",
                                      "train_finished_at")},
           **{k: pred[k] for k in ("infer_times", "image_ids", "eval_wall_s")},
           "volume3d": volume3d, "eval3d_wall_s": eval3d_wall_s, "params_m": count_params_m(model),
           "gflops": gflops, "gflops_input_hw": hw, "notes": notes, "memory": memory}
    if comm.get_world_size() > 1:
        write_json(run_dir / WORKER_OUT, out)
    return out
