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
  one), predicts the test split, ``benchmark.metrics.evaluate`` scores it, and result.json
  is rewritten with status ``ok`` (0) or ``failed`` + error (1). An interrupt (Ctrl-C) or
  SIGTERM is recorded the same way, then re-raised so a sweep stops too.
- after an ``ok`` result the checkpoints are deleted unless ``keep_checkpoint``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from contracts import result as R
from contracts.dataset import fingerprint as dataset_fingerprint
from contracts.dataset import read_dataset
from contracts.identity import identity, stale_reasons
from contracts.fsutil import (NotOwned, OutputBusy, claim, output_error, output_lock, resolve_output, sanitize,
                              write_json, write_text)

RUN_KIND = "run"
# What Hydra writes into a run folder it has just created, before the run starts (its log file;
# .hydra/ is the run's own, conf/train.yaml)
HYDRA_FILES = ("train.log",)

log = logging.getLogger(__name__)

D2_DIR = "d2"
PREDICTIONS = f"{D2_DIR}/inference/coco_instances_results.json"
METRICS_LOG = f"{D2_DIR}/metrics.json"
WORKER_OUT = f"{D2_DIR}/lungbench_worker.json"  # rank 0's facts when training runs under launch


class Terminated(BaseException):
    """SIGTERM arrived (e.g. Slurm time limit, `kill`): recorded like an interrupt."""


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The run config from conf/train.yaml + Hydra overrides, outside a Hydra app (tests,
    perf, notebooks). Unknown keys and bad choices raise, as on the command line."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return _compose("train", overrides=list(overrides))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def resolved_config(cfg: DictConfig) -> dict:
    """The run's full config as plain data, dataset_dir made absolute (what result.json keeps)."""
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    c["dataset_dir"] = str(Path(c["dataset_dir"]).expanduser().resolve())
    return sanitize(c)


def _experiment(cfg: DictConfig) -> str | None:
    if cfg.get("experiment"):
        return str(cfg.experiment)
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("experiment")
    except Exception:  # noqa: BLE001 - not under Hydra (tests, perf): no experiment
        return None


def describe(cfg: DictConfig, config: dict) -> dict:
    """The fields that say what the run is (every result has them, ok or failed)."""
    from benchmark.config import amp_choice, effective_lr
    bb, s = cfg.backbone, cfg.solver
    return {
        "schema": R.SCHEMA,
        "backbone": bb.name, "trunk": bb.trunk, "head": bb.head, "in_zoo": bool(bb.in_zoo),
        "schedule": cfg.schedule.name,
        "weights": str(cfg.weights.path) if cfg.weights.get("path") else cfg.weights.source,
        "experiment": _experiment(cfg),
        "solver": {"name": s.name, "ims_per_batch": s.ims_per_batch, "base_lr": effective_lr(cfg),
                   "max_iter": s.max_iter, "lr_schedule": s.lr_schedule, "budget_tflop": s.get("budget"),
                   "amp": _amp if isinstance(_amp := amp_choice(cfg), bool) else None},  # auto: set with the device
        "dataset": {"name": None, "dir": config["dataset_dir"], "split": cfg.split.scheme,
                    "fold": cfg.split.fold, "n_train_images": None, "n_test_images": None,
                    "image_size": None},
        "seed": cfg.seed,
    }


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str | None) -> dict:
    import detectron2
    import torch

    env = {"device": device, "torch": torch.__version__, "detectron2": detectron2.__version__,
           "python": platform.python_version(), "git_sha": _git_sha(),
           "hostname": socket.gethostname(), "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


_FORK = "fork" in __import__("multiprocessing").get_all_start_methods()


def run_config(cfg: DictConfig) -> dict:
    """The config a run records (resolved_config), after the adjustments run() makes to
    ``cfg`` in place: solver.num_workers=auto sized to the concurrent runs; 0 under the joblib
    launcher where fork is missing (macOS, Windows: hydra#964). benchmark.sweep calls it too."""
    if _joblib_launcher() and not _FORK and cfg.solver.num_workers:
        OmegaConf.update(cfg, "solver.num_workers", 0)
    _norm_from_file(cfg)
    if cfg.solver.num_workers == "auto":
        from benchmark.config import auto_workers

        OmegaConf.update(cfg, "solver.num_workers", auto_workers(os.cpu_count() or 1,
                                                                 _concurrent_runs()))
    return resolved_config(cfg)


def _norm_from_file(cfg: DictConfig) -> None:
    """weights.path with a trainable-norm weights group (the default, scratch): a file trained
    with BatchNorm (a zoo or ImageNet file, a fine-tune of one) keeps the trunk it was trained
    with (frozen BN, the zoo config's FREEZE_AT, the solver's LR), not the random-init recipe."""
    w = cfg.weights
    if not w.get("path") or w.get("norm") in (None, "FrozenBN", "BN", "SyncBN"):
        return
    from benchmark.weights import trained_norm

    if trained_norm(Path(str(w.path)).expanduser()) == "BN":
        for key in ("norm", "freeze_at", "recipe"):
            if key in w:
                OmegaConf.update(cfg, f"weights.{key}", None)


def _concurrent_runs() -> int:
    """Runs this machine holds at once: the joblib launcher's n_jobs, else 1."""
    from hydra.core.hydra_config import HydraConfig

    if not _joblib_launcher():
        return 1
    n = int(HydraConfig.get().launcher.n_jobs)  # ${lungbench_jobs:...} resolves here
    return n if n > 0 else (os.cpu_count() or 1)


def _joblib_launcher() -> bool:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # not under Hydra (tests, perf, notebooks)
        return False
    return "joblib" in str(HydraConfig.get().launcher.get("_target_", "")).lower()


# --------------------------------------------------------------------------- the run


def run(cfg: DictConfig, run_dir: str | os.PathLike) -> int:
    """Run (or skip, or resume) one run into ``run_dir``; returns the exit status (see module)."""
    run_dir = resolve_output(run_dir)
    try:
        claim(run_dir, RUN_KIND, "RUN_DIR", allow=HYDRA_FILES)
        with output_lock(run_dir, "RUN_DIR"):
            return _run_locked(cfg, run_dir)
    except (NotOwned, OutputBusy) as e:
        print(f"{e}; nothing done.", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the disk filled up while the failure itself was being recorded
        if (msg := output_error(e)) is None:
            raise
        print(f"{run_dir}: {msg}", file=sys.stderr)
        return 1


def _run_locked(cfg: DictConfig, run_dir: Path) -> int:
    config = run_config(cfg)
    # the dataset is read all through the run: a rebuild (or make clean) is refused meanwhile,
    # so a run never trains and tests on a mix of two versions
    with output_lock(config["dataset_dir"], "the dataset (dataset_dir)", shared=True):
        return _run_reading(cfg, run_dir, config)


def _run_reading(cfg: DictConfig, run_dir: Path, config: dict) -> int:
    fingerprint = dataset_fingerprint(config["dataset_dir"], cfg.split.scheme, cfg.split.fold)
    ident = identity(config, fingerprint)
    try:
        prev = R.read_result(run_dir)
    except R.ResultUnreadable:  # a half-written one from an older crash: the run starts over
        prev = None
    prev = None if prev is None else prev.data
    if prev is not None and prev.get("status") == "ok":
        diff = stale_reasons(prev, config, fingerprint)
        if diff:
            print(f"{run_dir}: holds a finished run that is not this one ({', '.join(diff)}); "
                  "nothing done. Use another run dir (or delete this one).", file=sys.stderr)
            return 2
        print(f"{run_dir}: finished run (status ok), not redone")
        return 0
    if prev is not None and (run_dir / D2_DIR / "last_checkpoint").is_file():
        diff = stale_reasons(prev, config, fingerprint)
        if diff:
            # resuming would continue another run's training under this run's name
            print(f"{run_dir}: holds a checkpoint of another run ({', '.join(diff)}); nothing "
                  f"done. Delete {run_dir / D2_DIR} to start over, or use another run dir.",
                  file=sys.stderr)
            return 2
    save_hydra_record(cfg, run_dir)
    if _joblib_launcher() and _FORK:
        import multiprocessing as mp

        # loky makes its own start method the default in its workers, and torch's DataLoader
        # then fails to start its workers with it (hydra#964); fork is what a plain process
        # uses on Linux.
        mp.set_start_method("fork", force=True)

    res = describe(cfg, config) | {
        "status": "failed",
        "error": {"type": "Unfinished", "where": "started", "traceback": None,
                  "message": "the run started but never finished: killed (SIGKILL, the OOM "
                             "killer) or the machine stopped; run it again to resume"},
        "metrics": None, "timing": None, "memory": None, "model": None,
        "env": environment(None), "notes": [],
        "artifacts": {"dataset_dir": config["dataset_dir"]},
        "config": config, "identity": ident, "started_at": _now(), "finished_at": None,
    }
    R.write_result(run_dir, res)

    from benchmark.engine import Progress

    progress = Progress()
    interrupted: BaseException | None = None

    def on_term(signum, frame):
        raise Terminated(f"signal {signal.Signals(signum).name} received")

    old_term = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    try:
        from benchmark.gpus import gpu_slot

        with gpu_slot(int(cfg.jobs_per_gpu), _joblib_launcher(), cfg.device, res):
            execute(cfg, run_dir, res, progress)
        res.update(status="ok", error=None)
    except (KeyboardInterrupt, Terminated) as e:
        interrupted = e
        res.update(status="failed", error=R.error_info(e, progress.where))
    except Exception as e:  # noqa: BLE001 - every failure is a result
        if (stop := _interrupt_behind(e)) is not None:
            # Ctrl-C / SIGTERM, then a hook failed while detectron2 cleaned up (after_train runs
            # in a finally): the interrupt is what happened
            interrupted = stop
            res.update(status="failed", error=R.error_info(stop, progress.where))
        elif isinstance(e, _expected_errors()):  # a clear message says it all
            log.error("run failed at %s: %s", progress.where, e)
        else:
            log.exception("run failed at %s", progress.where)
        if stop is None:
            res.update(status="failed", error=R.error_info(e, progress.where))
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        res["finished_at"] = _now()
        if res["memory"] is None and "torch" in sys.modules:  # e.g. an OOM: how far it got
            from benchmark.engine import peak_memory

            res["memory"] = peak_memory()
        R.write_result(run_dir, res)
    if res["status"] == "ok":
        if not cfg.keep_checkpoint:
            remove_checkpoints(run_dir / D2_DIR)
        from benchmark.logs import summary_line

        print(summary_line(res), flush=True)
        return 0
    err = res["error"]
    print(f"{run_dir}/result.json: FAILED at {err['where']}: {err['type']}: {err['message']}",
          file=sys.stderr)
    if interrupted is not None:
        raise interrupted
    return 1


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


def _interrupt_behind(e: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or Terminated that ``e`` was raised while handling, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (KeyboardInterrupt, Terminated)):
            return e
        e = e.__context__
    return None


def _expected_errors() -> tuple[type, ...]:
    from benchmark.config import WeightsUnavailable
    from contracts.errors import ConfigError
    from contracts.dataset import DatasetError
    from benchmark.engine import CheckpointMismatch

    return (ConfigError, WeightsUnavailable, DatasetError, CheckpointMismatch)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def remove_checkpoints(d2_dir: Path) -> None:
    """Delete model_*.pth and the last_checkpoint tag (a finished run never resumes)."""
    for p in d2_dir.glob("model_*.pth"):
        p.unlink(missing_ok=True)
    (d2_dir / "last_checkpoint").unlink(missing_ok=True)


def apply_budget(cfg: DictConfig, res: dict, d2cfg, image_hw, train_name: str, test_name: str,
                 output_dir: str, weights_file: str, device: str):
    """The run's detectron2 config with MAX_ITER (and what scales with it: warm-up, LR steps)
    bought by ``solver.budget`` training TFLOPs (benchmark.budget); recorded in res["solver"]."""
    from benchmark import config as C
    from benchmark.budget import iterations, train_flops_per_iter

    counted = train_flops_per_iter(d2cfg, image_hw)
    n = iterations(float(cfg.solver.budget), counted["train_flops_per_iter"])
    OmegaConf.update(cfg, "solver.max_iter", n)
    res["solver"].update(max_iter=n, budget_tflop=float(cfg.solver.budget), **counted)
    return C.build_d2_cfg(cfg, train_name=train_name, test_name=test_name, output_dir=output_dir,
                          weights_file=weights_file, device=device, image_hw=image_hw)


def execute(cfg: DictConfig, run_dir: Path, res: dict, progress) -> None:
    """Check inputs, train, predict, score and measure; fills ``res`` in place as it goes so a
    failure still records everything learned before it."""
    import torch

    from benchmark import config as C
    from benchmark import data as D
    from benchmark.engine import median_after

    # fail early: data, device, weights are checked before any model is built
    progress.where = "check dataset"
    dataset_dir = Path(res["config"]["dataset_dir"])
    dataset = read_dataset(dataset_dir)
    train = D.register_split(dataset, cfg.split.scheme, cfg.split.fold, "train")
    test = D.register_split(dataset, cfg.split.scheme, cfg.split.fold, "test")
    res["dataset"].update(name=dataset.name(cfg.dataset_name),
                          n_train_images=train.n_images, n_test_images=test.n_images,
                          image_size=list(test.image_hw))
    if train.mixed_sizes or test.mixed_sizes:
        res["notes"].append("images of several sizes; image_size is the most common one")
    res["artifacts"]["test_annotations"] = str(test.json_file)
    from benchmark.predict import conversion_settings

    # how new volumes are prepared for this run's model (make predict reads it here)
    res["conversion"] = conversion_settings(dataset.manifest)

    progress.where = "check device"
    device = C.resolve_device(cfg.device)
    concurrent = _concurrent_runs()
    if device == "cpu" and concurrent > 1:
        # the runs held at once share the cores: one torch thread pool each would oversubscribe
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // concurrent))
    from benchmark.logs import share_terminal

    share_terminal(concurrent)
    res["env"] = environment(device) | ({"gpu_slot": res["env"]["gpu_slot"]}
                                        if res["env"].get("gpu_slot") is not None else {})
    res["solver"]["amp"] = C.resolve_switch("amp", C.amp_choice(cfg), device)
    infer_batch = C.resolve_infer_batch(cfg.infer_batch_size, device)
    C.check_num_gpus(cfg.num_gpus, cfg.solver.ims_per_batch)
    if cfg.num_gpus > 1 and device == "cuda" and torch.cuda.device_count() < cfg.num_gpus:
        raise C.ConfigError(f"num_gpus={cfg.num_gpus} but {torch.cuda.device_count()} CUDA devices")

    progress.where = "check weights"
    weights = C.resolve_weights(cfg)
    res["weights"] = weights.kind
    if weights.note:
        res["notes"].append(weights.note)
    d2_dir = run_dir / D2_DIR
    resuming = (d2_dir / "last_checkpoint").is_file()
    # a resumed run loads its checkpoint, not the initial weights: do not demand a download
    weights_file = "" if resuming and weights.url else C.fetch_weights(weights, cfg.weights.download)

    progress.where = "build config"
    d2cfg = C.build_d2_cfg(cfg, train_name=train.name, test_name=test.name, output_dir=str(d2_dir),
                           weights_file=weights_file, device=device, image_hw=train.image_hw)
    if cfg.solver.get("budget") is not None:
        progress.where = "count training FLOPs"
        d2cfg = apply_budget(cfg, res, d2cfg, train.image_hw, train.name, test.name, str(d2_dir),
                             weights_file, device)
    elif cfg.measure.flops:  # what the iterations cost, so reports can tell unequal budgets
        progress.where = "count training FLOPs"
        from benchmark.budget import train_flops_per_iter

        try:
            res["solver"].update(train_flops_per_iter(d2cfg, train.image_hw))
        except Exception as e:  # noqa: BLE001 - a count is a measurement, not the run
            res["notes"].append(f"training FLOPs not counted: {type(e).__name__}: {e}")
    d2_dir.mkdir(parents=True, exist_ok=True)
    (d2_dir / "config.yaml").write_text(d2cfg.dump())
    from benchmark.logs import route_logs

    res["artifacts"]["log"] = f"{D2_DIR}/{route_logs(d2_dir).name}"  # detectron2's INFO chatter
    res["artifacts"].update(config_yaml=f"{D2_DIR}/config.yaml", tensorboard=D2_DIR,
                            metrics_log=METRICS_LOG)

    split = (str(dataset_dir), str(cfg.split.scheme), int(cfg.split.fold))
    score_thresh = float(cfg.dice_score_thresh)
    if cfg.num_gpus > 1:
        from benchmark.ddp import launch

        progress.where = f"train (DDP, {cfg.num_gpus} processes)"
        if device != "cuda":
            res["notes"].append(f"{cfg.num_gpus} CPU processes (gloo): the multi-GPU code path run "
                                "on a CPU, to test it; not a way to train faster")
        launch(_worker, cfg.num_gpus, device,
               args=(d2cfg, split, test.name, str(run_dir), bool(cfg.measure.flops), int(cfg.seed),
                     infer_batch, None, res["identity"]["hash"], res["backbone"], score_thresh))
        out = json.loads((run_dir / WORKER_OUT).read_text())
    else:
        out = _worker(d2cfg, split, test.name, str(run_dir), bool(cfg.measure.flops),
                      int(cfg.seed), infer_batch, progress=progress, identity=res["identity"]["hash"],
                      label=res["backbone"], score_thresh=score_thresh)

    res["resumed_from_iter"] = out["start_iter"]
    if out["start_iter"]:
        res["notes"].append(f"resumed at iteration {out['start_iter']}: train_wall_s and "
                            "train_s_per_iter cover the last process's iterations only")
    res["notes"] += out["notes"]
    res["artifacts"]["predictions"] = PREDICTIONS
    # every test image predicted exactly once, or the metrics would score a part as the whole
    ids = out["image_ids"]
    if len(ids) != len(set(ids)) or len(ids) != test.n_images:
        raise RuntimeError(f"inference predicted {len(set(ids))} distinct of {test.n_images} test "
                           f"images ({len(ids)} predictions passes): the metrics would be wrong")
    res["dataset"]["n_predicted_images"] = len(ids)
    res["model"] = {"params_m": out["params_m"], "gflops": out["gflops"],
                    "gflops_input_hw": out["gflops_input_hw"]}
    train_s, n_timed = median_after(out["step_times"], int(cfg.measure.warmup_iters))
    res["timing"] = {
        "train_s_per_iter": train_s, "infer_s_per_image": median_after(out["infer_times"], 1)[0],
        "train_wall_s": out["train_wall_s"], "eval_wall_s": out["eval_wall_s"],
        "train_iters_timed": n_timed, "infer_batch_size": infer_batch,
        "eval3d_wall_s": out.get("eval3d_wall_s"),
        "train_started_at": out.get("train_started_at"), "train_finished_at": out.get("train_finished_at"),
    }

    progress.where = "metrics"
    from benchmark.metrics import evaluate

    res["metrics"] = add_volume3d(evaluate(str(test.json_file), str(run_dir / PREDICTIONS),
                                           score_thresh=score_thresh), out.get("volume3d"))
    res["memory"] = out["memory"]
    res["artifacts"]["checkpoint"] = f"{D2_DIR}/model_final.pth" if cfg.keep_checkpoint else None


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


def add_volume3d(metrics: dict, volume3d: dict | None) -> dict:
    """``metrics`` with the 3-D section (``metrics.volume3d``, None when not computed) and each
    case's 3-D Dice and NSD beside its AP in ``metrics.per_case`` (the report tests them alike)."""
    metrics["volume3d"] = volume3d
    for case, m in ((volume3d or {}).get("per_case") or {}).items():
        metrics["per_case"].setdefault(case, {}).update(m)
    return metrics


def _volume3d(model, d2cfg, dataset_dir: str, test_name: str, predictions: list[dict], score_thresh: float,
              batch_size: int) -> tuple[dict | None, list[str]]:
    """The run's 3-D evaluation (benchmark.predict.evaluate_volumes) of its test cases that have
    no slice in training; whatever goes wrong there is a note, not a failed run (the model and
    its COCO metrics are done)."""
    from detectron2.data import MetadataCatalog

    from contracts.dataset import read_coco
    from benchmark.predict import evaluate_volumes, known_slices

    try:
        test_coco = read_coco(Path(MetadataCatalog.get(test_name).json_file))
        trained = {str(im["case_id"]) for name in d2cfg.DATASETS.TRAIN
                   for im in read_coco(Path(MetadataCatalog.get(name).json_file))["images"]}
        tested = {str(im["case_id"]) for im in test_coco["images"]}
        cases = sorted(tested - trained)
        notes = []
        if tested & trained:
            # slice_random: a whole volume would score slices the model trained on
            notes.append(f"3-D metrics leave out {len(tested & trained)} of {len(tested)} test case(s) "
                         "with slices in training (a slice-level split)")
        if not cases:
            return None, notes
        # the test slices were just predicted on the same pixels: only the others run again
        volume3d, more = evaluate_volumes(model, d2cfg, dataset_dir, cases, score_thresh, batch_size,
                                          known=known_slices(test_coco, predictions))
        return volume3d, notes + more
    except Exception as e:  # noqa: BLE001 - out of memory, a broken source, ...: the run stands
        log.exception("3-D metrics failed")
        return None, [f"3-D metrics not computed: {type(e).__name__}: {e}"]


def _worker(d2cfg, split: tuple, test_name: str, run_dir: str, flops: bool, seed: int,
            infer_batch: int = 1, progress=None, identity: str | None = None,
            label: str | None = None, score_thresh: float = 0.5) -> dict:
    """Train + predict + measure in this process (rank r of a launch, or the only one).
    ``split``: (dataset_dir, scheme, fold), to register the splits in spawned processes.
    Returns the facts run() records; under a multi-process launch rank 0 writes them to
    WORKER_OUT instead (other ranks return after training)."""
    import time

    from detectron2.data import MetadataCatalog
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    from benchmark import data as D
    from benchmark.engine import (Progress, count_gflops, count_params_m, gpu_peaks, peak_memory,
                                  predict, reset_gpu_peaks, reset_peak_memory, run_training)

    import torch

    progress = progress or Progress()
    run_dir = Path(run_dir)
    # detectron2's default_setup does this; the harness does not call default_setup
    torch.backends.cudnn.benchmark = bool(d2cfg.CUDNN_BENCHMARK)
    reset_peak_memory()
    seed_all_rng(seed + comm.get_rank())
    if comm.get_world_size() > 1:
        # spawned processes start with empty catalogs: register the splits again
        for part in ("train", "test"):
            D.register_split(read_dataset(split[0]), split[1], split[2], part)
    if comm.get_world_size() > 1:  # a spawned process: its logs go where the run's do
        from benchmark.logs import route_logs

        route_logs(run_dir / D2_DIR)
    trained = run_training(d2cfg, progress, identity, label)
    if not comm.is_main_process():
        return {}
    model = trained["model"]
    # training's GPU peak, then inference's on its own (batched C4 inference can need more)
    train_gpu = gpu_peaks()
    reset_gpu_peaks()
    progress.where = "inference"
    pred = predict(model, d2cfg, test_name, run_dir / PREDICTIONS, progress, batch_size=infer_batch)
    notes: list[str] = list(trained.get("notes", []))
    memory = peak_memory()  # the backbone's training and inference, before the 3-D evaluation
    memory.update(gpu_memory_sections(train_gpu, gpu_peaks()))
    progress.where = "3-D metrics"
    t3d = time.perf_counter()
    volume3d, notes3d = _volume3d(model, d2cfg, split[0], test_name, pred["predictions"], score_thresh,
                                  infer_batch)
    notes += notes3d
    eval3d_wall_s = time.perf_counter() - t3d
    progress.where = "measure"
    gflops, hw = None, None
    if flops:
        try:
            meta = MetadataCatalog.get(test_name)
            image = D.first_image(meta.json_file, meta.image_root)
            hw = list(image.shape[:2])
            gflops = count_gflops(model, image)
        except Exception as e:  # noqa: BLE001 - FLOPs are a nice-to-have, never a failure
            notes.append(f"GFLOPs not counted: {type(e).__name__}: {e}")
    if pred["oom_batches"]:
        notes.append(f"{pred['oom_batches']} inference batch(es) of {infer_batch} ran out of GPU "
                     "memory and ran again one image at a time (infer_batch_size lower avoids it)")
    out = {"start_iter": trained["start_iter"], "step_times": trained["step_times"],
           "train_wall_s": trained["train_wall_s"], "infer_times": pred["infer_times"],
           "train_started_at": trained["train_started_at"],
           "train_finished_at": trained["train_finished_at"],
           "image_ids": pred["image_ids"],
           "eval_wall_s": pred["eval_wall_s"], "volume3d": volume3d, "eval3d_wall_s": eval3d_wall_s,
           "params_m": count_params_m(model),
           "gflops": gflops, "gflops_input_hw": hw, "notes": notes, "memory": memory}
    if comm.get_world_size() > 1:
        write_json(run_dir / WORKER_OUT, out)
    return out
