"""The steps of one run: check the dataset, device and weights, build the detectron2 config,
train and predict (``benchmark.training.worker``), score; each records what it learns in the
run's result as it goes, so a failure still records everything learned before it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from benchmark.training import config
from benchmark.training.data import Split, register_split
from benchmark.training.environment import environment
from benchmark.training.hydra_env import concurrent_runs
from benchmark.training.worker import D2_DIR, METRICS_LOG, PREDICTIONS, WORKER_OUT, WorkerJob, train_worker
from contracts.dataset import Dataset
from contracts.errors import ConfigError


def check_dataset(cfg: DictConfig, dataset: Dataset | Exception, res: dict) -> tuple[Split, Split]:
    """The run's train and test splits, registered with detectron2; their facts go into
    ``res`` (dataset section, notes, the test annotations, the conversion settings).
    ``dataset``: the run's Dataset, or why its dataset.json could not be read (raised here)."""
    from benchmark.evaluation.predictor import conversion_settings

    if isinstance(dataset, Exception):
        raise dataset
    train = register_split(dataset, cfg.split.scheme, cfg.split.fold, "train")
    test = register_split(dataset, cfg.split.scheme, cfg.split.fold, "test")
    res["dataset"].update(name=dataset.name(cfg.dataset_name),
                          n_train_images=train.n_images, n_test_images=test.n_images,
                          image_size=list(test.image_hw))
    if train.mixed_sizes or test.mixed_sizes:
        res["notes"].append("images of several sizes; image_size is the most common one")
    res["artifacts"]["test_annotations"] = str(test.json_file)
    # how new volumes are prepared for this run's model (make predict reads it here)
    res["conversion"] = conversion_settings(dataset.manifest)
    return train, test


def check_device(cfg: DictConfig, res: dict) -> tuple[str, int]:
    """(device "cpu" or "cuda", inference batch size); the terminal and CPU threads shared with
    the runs held at once, ``env`` and AMP recorded. ConfigError for an impossible choice."""
    import torch

    from benchmark.training.logs import share_terminal

    device = config.resolve_device(cfg.device)
    concurrent = concurrent_runs()
    if device == "cpu" and concurrent > 1:
        # the runs held at once share the cores: one torch thread pool each would oversubscribe
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // concurrent))
    share_terminal(concurrent)
    res["env"] = environment(device) | ({"gpu_slot": res["env"]["gpu_slot"]}
                                        if res["env"].get("gpu_slot") is not None else {})
    res["solver"]["amp"] = config.resolve_switch("amp", config.amp_choice(cfg), device)
    infer_batch = config.resolve_infer_batch(cfg.infer_batch_size, device)
    config.check_num_gpus(cfg.num_gpus, cfg.solver.ims_per_batch)
    if cfg.num_gpus > 1 and device == "cuda" and torch.cuda.device_count() < cfg.num_gpus:
        raise ConfigError(f"num_gpus={cfg.num_gpus} but {torch.cuda.device_count()} CUDA devices")
    return device, infer_batch


def check_weights(cfg: DictConfig, run_dir: Path, res: dict) -> str:
    """The local file of the initial weights ("" for scratch, or for a resumed run that needs no
    download); which weights, and why they differ from the choice, recorded in ``res``."""
    weights = config.resolve_weights(cfg)
    res["weights"] = weights.kind
    if weights.note:
        res["notes"].append(weights.note)
    resuming = (run_dir / D2_DIR / "last_checkpoint").is_file()
    # a resumed run loads its checkpoint, not the initial weights: do not demand a download
    return "" if resuming and weights.url else config.fetch_weights(weights, cfg.weights.download)


def build_config(cfg: DictConfig, res: dict, progress, splits: tuple[Split, Split], d2_dir: Path,
                 weights_file: str, device: str):
    """The run's detectron2 config; with ``solver.budget`` its MAX_ITER (and what scales with
    it) bought by that many training TFLOPs (benchmark.training.budget), else the FLOPs its
    iterations cost where ``measure.flops`` (so reports can tell unequal budgets), in
    res["solver"]; written to ``d2/config.yaml``, detectron2's INFO chatter routed to its log."""
    from benchmark.training.budget import iterations, train_flops_per_iter
    from benchmark.training.logs import route_logs

    train, test = splits
    kwargs = dict(train_name=train.name, test_name=test.name, output_dir=str(d2_dir),
                  weights_file=weights_file, device=device, image_hw=train.image_hw)
    d2cfg = config.build_d2_cfg(cfg, **kwargs)
    if cfg.solver.get("budget") is not None:
        progress.where = "count training FLOPs"
        counted = train_flops_per_iter(d2cfg, train.image_hw)
        n = iterations(float(cfg.solver.budget), counted["train_flops_per_iter"])
        OmegaConf.update(cfg, "solver.max_iter", n)
        res["solver"].update(max_iter=n, budget_tflop=float(cfg.solver.budget), **counted)
        d2cfg = config.build_d2_cfg(cfg, **kwargs)
    elif cfg.measure.flops:
        progress.where = "count training FLOPs"
        try:
            res["solver"].update(train_flops_per_iter(d2cfg, train.image_hw))
        except Exception as e:  # noqa: BLE001 - a count is a measurement, not the run
            res["notes"].append(f"training FLOPs not counted: {type(e).__name__}: {e}")
    d2_dir.mkdir(parents=True, exist_ok=True)
    (d2_dir / "config.yaml").write_text(d2cfg.dump())
    res["artifacts"]["log"] = f"{D2_DIR}/{route_logs(d2_dir).name}"
    res["artifacts"].update(config_yaml=f"{D2_DIR}/config.yaml", tensorboard=D2_DIR,
                            metrics_log=METRICS_LOG)
    return d2cfg


def train(cfg: DictConfig, job: WorkerJob, device: str, res: dict, progress) -> dict:
    """The worker's facts: in this process, or in ``num_gpus`` processes (benchmark.training.ddp)."""
    if cfg.num_gpus <= 1:
        return train_worker(job, progress=progress)
    from benchmark.training.ddp import launch

    progress.where = f"train (DDP, {cfg.num_gpus} processes)"
    if device != "cuda":
        res["notes"].append(f"{cfg.num_gpus} CPU processes (gloo): the multi-GPU code path run "
                            "on a CPU, to test it; not a way to train faster")
    launch(train_worker, cfg.num_gpus, device, args=(job,))
    return json.loads((Path(job.run_dir) / WORKER_OUT).read_text())


def record_training(cfg: DictConfig, out: dict, test: Split, infer_batch: int, res: dict) -> None:
    """The worker's facts in ``res``: resume, notes, model size and timing. RuntimeError unless
    every test image was predicted exactly once (the metrics would score a part as the whole)."""
    from benchmark.training.engine import median_after

    res["resumed_from_iter"] = out["start_iter"]
    if out["start_iter"]:
        res["notes"].append(f"resumed at iteration {out['start_iter']}: train_wall_s and "
                            "train_s_per_iter cover the last process's iterations only")
    res["notes"] += out["notes"]
    res["artifacts"]["predictions"] = PREDICTIONS
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


def execute(cfg: DictConfig, run_dir: Path, res: dict, dataset: Dataset | Exception, progress) -> None:
    """Check inputs, train, predict, score and measure: the steps of the module doc, in order."""
    from benchmark.evaluation.metrics import evaluate
    from benchmark.evaluation.volume3d import add_volume3d

    # fail early: data, device, weights are checked before any model is built
    progress.where = "check dataset"
    train_split, test_split = check_dataset(cfg, dataset, res)
    progress.where = "check device"
    device, infer_batch = check_device(cfg, res)
    progress.where = "check weights"
    weights_file = check_weights(cfg, run_dir, res)
    progress.where = "build config"
    d2_dir = run_dir / D2_DIR
    d2cfg = build_config(cfg, res, progress, (train_split, test_split), d2_dir, weights_file, device)
    job = WorkerJob(d2cfg, dataset, str(cfg.split.scheme), int(cfg.split.fold), test_split.name, str(run_dir),
                    bool(cfg.measure.flops), int(cfg.seed), infer_batch, res["identity"]["hash"],
                    res["backbone"], float(cfg.dice_score_thresh))
    out = train(cfg, job, device, res, progress)
    record_training(cfg, out, test_split, infer_batch, res)
    progress.where = "metrics"
    test_coco = dataset.coco(cfg.split.scheme, cfg.split.fold, "test")
    res["metrics"] = add_volume3d(evaluate(test_coco, str(run_dir / PREDICTIONS), score_thresh=job.score_thresh),
                                  out.get("volume3d"))
    res["memory"] = out["memory"]
    res["artifacts"]["checkpoint"] = f"{D2_DIR}/model_final.pth" if cfg.keep_checkpoint else None
