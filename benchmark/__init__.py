"""lungbench's training harness: one run (benchmark.train, benchmark.training), its scoring
(benchmark.evaluation), sweeps (benchmark.sweep, benchmark.sweeping) and make predict
(benchmark.predict). Importing the package registers the OmegaConf resolver the launcher
configs use, in the sweep's process and in every joblib worker alike."""

from omegaconf import OmegaConf


def concurrent_jobs(jobs_per_gpu: int) -> int:
    """``${lungbench_jobs:N}``, the joblib launcher's n_jobs: every visible GPU
    (CUDA_VISIBLE_DEVICES) x N runs, or 2 runs where torch sees no GPU."""
    import torch

    gpus = torch.cuda.device_count()
    return gpus * int(jobs_per_gpu) if gpus else 2


if not OmegaConf.has_resolver("lungbench_jobs"):
    OmegaConf.register_new_resolver("lungbench_jobs", concurrent_jobs)
