"""One run's lifecycle: skip if finished, resume, train, evaluate, measure, write result.json.

``run(cfg, run_dir)`` is the whole story and returns the exit status:

- the run dir must be new, empty or a lungbench run folder (owner marker); anything else is
  refused with 2 and left untouched, and so is a run dir another process is running in.
- ``<run dir>/result.json`` with status ``ok`` -> the run is not redone (0; the file is not
  touched). If it is not this run (contracts.identity: another config beyond the HARMLESS
  keys, or another dataset), nothing is done and 2 is returned: a folder holds one run. The
  same holds for a failed run that left a checkpoint: resuming it under another config would
  mix two runs; and a checkpoint itself carries the identity of the run that wrote it, so it
  is never resumed under another one (even with result.json deleted).
- otherwise result.json is written at once with status ``failed`` / ``Unfinished`` (so a run
  killed by SIGKILL or the kernel's OOM killer still shows up as failed), then detectron2
  trains in ``<run dir>/d2`` (resuming from its last checkpoint if a previous attempt left
  one), predicts the test split, ``benchmark.evaluation.metrics.evaluate`` scores it (the
  steps: ``benchmark.training.steps``), and result.json is rewritten with status ``ok`` (0)
  or ``failed`` + error (1). An interrupt (Ctrl-C) or SIGTERM is recorded the same way, then
  re-raised so a sweep stops too (``benchmark.training.signals``).
- after an ``ok`` result the checkpoints are deleted unless ``keep_checkpoint``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from benchmark.training.config import amp_choice, effective_lr, run_config
from benchmark.training.environment import environment, now
from benchmark.training.hydra_env import (experiment_choice, fork_under_joblib, joblib_launcher,
                                          save_hydra_record)
from benchmark.training.signals import Terminated, interrupt_behind, sigterm_raises
from benchmark.training.worker import D2_DIR
from contracts import result
from contracts.dataset import Dataset, read_dataset
from contracts.fsutil import NotOwned, OutputBusy, claim, output_error, output_lock, resolve_output
from contracts.identity import identity, stale_reasons

RUN_KIND = "run"
# What Hydra writes into a run folder it has just created, before the run starts (its log file;
# .hydra/ is the run's own, conf/train.yaml)
HYDRA_FILES = ("train.log",)

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: str | os.PathLike) -> int:
    """Run (or skip, or resume) one run into ``run_dir``; returns the exit status (see module)."""
    run_dir = resolve_output(run_dir)
    try:
        claim(run_dir, RUN_KIND, "RUN_DIR", allow=HYDRA_FILES)
        with output_lock(run_dir, "RUN_DIR"):
            config = run_config(cfg)
            # the dataset is read all through the run: a rebuild (or make clean) is refused
            # meanwhile, so a run never trains and tests on a mix of two versions
            with output_lock(config["dataset_dir"], "the dataset (dataset_dir)", shared=True):
                return run_reading(cfg, run_dir, config)
    except (NotOwned, OutputBusy) as e:
        print(f"{e}; nothing done.", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the disk filled up while the failure itself was being recorded
        if (msg := output_error(e)) is None:
            raise
        print(f"{run_dir}: {msg}", file=sys.stderr)
        return 1


def read_inputs(config: dict) -> tuple[Dataset | Exception, dict | None]:
    """(the run's dataset, read once, or why it cannot be read: the run then fails at its dataset
    check; the fingerprint of its split, None where it cannot be had)."""
    split = config["split"]
    try:
        dataset = read_dataset(config["dataset_dir"])
    except (OSError, ValueError, TypeError) as e:  # DatasetError is a ValueError
        return e, None
    try:
        return dataset, dataset.fingerprint(split["scheme"], int(split["fold"]))
    except (OSError, ValueError, TypeError):
        return dataset, None


def refusal(run_dir: Path, config: dict, fingerprint: dict | None) -> int | None:
    """The exit status when the folder's result says this run is done (0) or holds another run
    (2, also for another run's checkpoint); None when the run goes ahead."""
    try:
        prev = result.read_result(run_dir)
    except result.ResultUnreadable:  # a half-written one from an older crash: the run starts over
        prev = None
    if prev is None:
        return None
    prev = prev.data
    if prev.get("status") == "ok":
        diff = stale_reasons(prev, config, fingerprint)
        if diff:
            print(f"{run_dir}: holds a finished run that is not this one ({', '.join(diff)}); "
                  "nothing done. Use another run dir (or delete this one).", file=sys.stderr)
            return 2
        print(f"{run_dir}: finished run (status ok), not redone")
        return 0
    if (run_dir / D2_DIR / "last_checkpoint").is_file():
        diff = stale_reasons(prev, config, fingerprint)
        if diff:
            # resuming would continue another run's training under this run's name
            print(f"{run_dir}: holds a checkpoint of another run ({', '.join(diff)}); nothing "
                  f"done. Delete {run_dir / D2_DIR} to start over, or use another run dir.",
                  file=sys.stderr)
            return 2
    return None


def run_reading(cfg: DictConfig, run_dir: Path, config: dict) -> int:
    """The run, holding its folder and its dataset: refused, skipped, or run and recorded."""
    dataset, fingerprint = read_inputs(config)
    refused = refusal(run_dir, config, fingerprint)
    if refused is not None:
        return refused
    save_hydra_record(cfg, run_dir)
    fork_under_joblib()
    res = started(cfg, config, identity(config, fingerprint))
    result.write_result(run_dir, res)
    interrupted = attempt(cfg, run_dir, res, dataset)
    if res["status"] == "ok":
        if not cfg.keep_checkpoint:
            remove_checkpoints(run_dir / D2_DIR)
        from benchmark.training.logs import summary_line

        print(summary_line(res), flush=True)
        return 0
    err = res["error"]
    print(f"{run_dir}/{result.FILENAME}: FAILED at {err['where']}: {err['type']}: {err['message']}",
          file=sys.stderr)
    if interrupted is not None:
        raise interrupted
    return 1


def started(cfg: DictConfig, config: dict, ident: dict) -> dict:
    """The result written as the run starts (module doc): what the run is (every result has it, ok
    or failed), and failed / Unfinished."""
    bb, s = cfg.backbone, cfg.solver
    amp = amp_choice(cfg)
    return {
        "schema": result.SCHEMA,
        "backbone": bb.name, "trunk": bb.trunk, "head": bb.head, "in_zoo": bool(bb.in_zoo),
        "schedule": cfg.schedule.name,
        "weights": str(cfg.weights.path) if cfg.weights.get("path") else cfg.weights.source,
        "experiment": experiment_choice(cfg),
        "solver": {"name": s.name, "ims_per_batch": s.ims_per_batch, "base_lr": effective_lr(cfg),
                   "max_iter": s.max_iter, "lr_schedule": s.lr_schedule, "budget_tflop": s.get("budget"),
                   "amp": amp if isinstance(amp, bool) else None},  # auto: set with the device
        "dataset": {"name": None, "dir": config["dataset_dir"], "split": cfg.split.scheme,
                    "fold": cfg.split.fold, "n_train_images": None, "n_test_images": None,
                    "image_size": None},
        "seed": cfg.seed,
        "status": "failed",
        "error": {"type": "Unfinished", "where": "started", "traceback": None,
                  "message": "the run started but never finished: killed (SIGKILL, the OOM "
                             "killer) or the machine stopped; run it again to resume"},
        "metrics": None, "timing": None, "memory": None, "model": None,
        "env": environment(None), "notes": [],
        "artifacts": {"dataset_dir": config["dataset_dir"]},
        "config": config, "identity": ident, "started_at": now(), "finished_at": None,
    }


def attempt(cfg: DictConfig, run_dir: Path, res: dict, dataset: Dataset | Exception) -> BaseException | None:
    """Execute the run and record how it ended in ``res`` and result.json, whatever happens.
    Returns the interrupt (Ctrl-C, SIGTERM) to re-raise once recorded, else None."""
    from benchmark.training.engine import Progress
    from benchmark.training.gpus import gpu_slot
    from benchmark.training.steps import execute

    progress = Progress()
    interrupted: BaseException | None = None
    try:
        with sigterm_raises(), gpu_slot(int(cfg.jobs_per_gpu), joblib_launcher(), cfg.device, res):
            execute(cfg, run_dir, res, dataset, progress)
        res.update(status="ok", error=None)
    except (KeyboardInterrupt, Terminated) as e:
        interrupted = e
        res.update(status="failed", error=result.error_info(e, progress.where))
    except Exception as e:  # noqa: BLE001 - every failure is a result
        interrupted = record_failure(e, res, progress.where)
    finally:
        res["finished_at"] = now()
        if res["memory"] is None and "torch" in sys.modules:  # e.g. an OOM: how far it got
            from benchmark.training.engine import peak_memory

            res["memory"] = peak_memory()
        result.write_result(run_dir, res)
    return interrupted


def record_failure(e: Exception, res: dict, where: str) -> BaseException | None:
    """``res`` failed with ``e`` at ``where`` (logged in full unless its message says it all).
    Returns the interrupt ``e`` was raised while handling, if any (a hook failed while
    detectron2 cleaned up after Ctrl-C / SIGTERM): the interrupt is what happened."""
    stop = interrupt_behind(e)
    if stop is None:
        if isinstance(e, expected_errors()):
            log.error("run failed at %s: %s", where, e)
        else:
            log.exception("run failed at %s", where)
    res.update(status="failed", error=result.error_info(stop or e, where))
    return stop


def expected_errors() -> tuple[type, ...]:
    """The failures whose message says it all (no traceback in the log)."""
    from benchmark.training.config import WeightsUnavailable
    from benchmark.training.engine import CheckpointMismatch
    from contracts.dataset import DatasetError
    from contracts.errors import ConfigError

    return (ConfigError, WeightsUnavailable, DatasetError, CheckpointMismatch)


def remove_checkpoints(d2_dir: Path) -> None:
    """Delete model_*.pth and the last_checkpoint tag (a finished run never resumes)."""
    for p in d2_dir.glob("model_*.pth"):
        p.unlink(missing_ok=True)
    (d2_dir / "last_checkpoint").unlink(missing_ok=True)
