"""What the Hydra app around a run says about it: the launcher (joblib or not), how many runs
share the machine, the experiment chosen, and the ``.hydra/`` record of the run folder.
Outside Hydra (tests, perf, notebooks) a run is alone, of no experiment, with no record."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from contracts.fsutil import write_text

FORK = "fork" in multiprocessing.get_all_start_methods()


def joblib_launcher() -> bool:
    """Whether this run is a job of Hydra's joblib launcher."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # not under Hydra (tests, perf, notebooks)
        return False
    return "joblib" in str(HydraConfig.get().launcher.get("_target_", "")).lower()


def concurrent_runs() -> int:
    """Runs this machine holds at once: the joblib launcher's n_jobs, else 1."""
    from hydra.core.hydra_config import HydraConfig

    if not joblib_launcher():
        return 1
    n = int(HydraConfig.get().launcher.n_jobs)  # ${lungbench_jobs:...} resolves here
    return n if n > 0 else (os.cpu_count() or 1)


def experiment_choice(cfg: DictConfig) -> str | None:
    """The run's experiment: ``cfg.experiment``, else Hydra's ``+experiment=`` choice."""
    if cfg.get("experiment"):
        return str(cfg.experiment)
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("experiment")
    except Exception:  # noqa: BLE001 - not under Hydra (tests, perf): no experiment
        return None


def fork_under_joblib() -> None:
    """Under the joblib launcher, fork as the start method again where the platform has it: loky
    makes its own the default in its workers, and torch's DataLoader then fails to start its
    workers with it (hydra#964); fork is what a plain process uses on Linux."""
    if joblib_launcher() and FORK:
        multiprocessing.set_start_method("fork", force=True)


def save_hydra_record(cfg: DictConfig, run_dir: Path) -> None:
    """``<run dir>/.hydra/{config,hydra,overrides}.yaml``, as Hydra's ``output_subdir`` would
    hold them, written only once this run holds its folder (conf/train.yaml turns Hydra's off)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # not under Hydra (tests, perf): nothing to record
        return
    hc = HydraConfig.get()
    files = {"config.yaml": cfg, "hydra.yaml": OmegaConf.create({"hydra": hc}),
             "overrides.yaml": hc.overrides.task}
    for name, node in files.items():
        write_text(run_dir / ".hydra" / name, OmegaConf.to_yaml(node))
