"""Sweeps: experiment files, run planning/folders, launcher configs, summary; slow: real sweeps.

The fast tests compose the real conf/ with Hydra (no training). The slow ones run
`python -m benchmark.sweep` on the tiny phantom with the real detectron2 training (smoke solver,
2 iterations): a run that fails does not stop the sweep, the sweep exits non-zero with a
one-line summary, and a re-run redoes only the failed run; joblib runs two at once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.sweep import main
from benchmark.sweeping.hydra_callbacks import register_launchers
from benchmark.sweeping.plan import PlannedRun, SweepError, SweepPlan, plan_sweep
from benchmark.sweeping.runner import read_statuses, sweep_summary, write_sweep_file
from benchmark.training.config import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
NINE = ["R50-C4", "R50-DC5", "R50-FPN", "R101-C4", "R101-DC5", "R101-FPN", "X101-C4", "X101-DC5", "X101-FPN"]
# The paper's Table 3 rows, in its order: (backbone, zoo schedule).
TABLE3 = [("R50-C4", "1x"), ("R50-DC5", "1x"), ("R50-FPN", "1x"), ("R50-C4", "3x"), ("R50-DC5", "3x"),
          ("R101-C4", "3x"), ("R101-DC5", "3x"), ("R101-FPN", "3x"), ("X101-FPN", "3x")]


def plan(tmp_path: Path, *overrides: str) -> SweepPlan:
    return plan_sweep([f"dataset_dir={tmp_path / 'data'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides])


# ----------------------------------------------------------------------------- experiments
@pytest.mark.parametrize("experiment", ["grid9", "smoke", "demo"])
def test_nine_backbone_experiments(tmp_path, experiment):
    p = plan(tmp_path, f"+experiment={experiment}")
    labels = [r.label for r in p.runs]
    # the demo lists them longest run first (two at once finish together); the others in order
    assert (sorted(labels) == sorted(NINE)) if experiment == "demo" else labels == NINE
    assert [r.config["backbone"]["name"] for r in p.runs] == labels
    assert {r.config["experiment"] for r in p.runs} == {experiment}
    assert all(Path(r.run_dir) == tmp_path / "sweep" / r.label for r in p.runs)
    if experiment != "grid9":  # smoke/demo: the smoke solver from random init (nothing to download)
        assert {(r.config["solver"]["name"], r.config["weights"]["source"]) for r in p.runs} == {("smoke", "scratch")}


def test_table3_runs_the_papers_nine_rows(tmp_path):
    p = plan(tmp_path, "+experiment=table3")
    assert [(r.config["backbone"]["name"], r.config["schedule"]["name"]) for r in p.runs] == TABLE3
    assert [r.label for r in p.runs] == [f"{b}_{s}" for b, s in TABLE3]
    assert {(r.config["solver"]["name"], r.config["solver"]["max_iter"], r.config["solver"]["base_lr"],
             r.config["solver"]["ims_per_batch"], r.config["weights"]["source"], r.config["experiment"])
            for r in p.runs} == {("paper", 5000, 0.00025, 2, "zoo", "table3")}


def test_amp_experiment_pairs_fp32_and_amp_over_seeds(tmp_path):
    p = plan(tmp_path, "+experiment=amp_ap")
    got = sorted((r.config["backbone"]["name"], r.config["amp"], r.config["seed"]) for r in p.runs)
    assert got == sorted(("R50-FPN", amp, s) for amp in (False, True) for s in (0, 1, 2))
    assert len({r.run_dir for r in p.runs}) == 6
    assert {(r.config["solver"]["name"], r.config["weights"]["source"]) for r in p.runs} == {("paper", "zoo")}


def test_command_line_axes_get_their_own_folders(tmp_path):
    p = plan(tmp_path, "+experiment=grid9", "backbone=r50_c4,x101_dc5", "split.fold=0,1", "seed=0,2")
    assert len(p.runs) == 2 * 2 * 2
    assert len({r.run_dir for r in p.runs}) == len(p.runs)
    run = next(r for r in p.runs if r.label == "X101-DC5_fold=1_seed=2")
    assert (run.config["backbone"]["name"], run.config["split"]["fold"], run.config["seed"]) == ("X101-DC5", 1, 2)

    # a config-group axis is named by its choice; a backbone list on the command line replaces the nine
    p = plan(tmp_path, "+experiment=smoke", "backbone=r50_fpn,x101_fpn", "schedule=1x,3x")
    assert [r.label for r in p.runs] == ["R50-FPN_schedule=1x", "R50-FPN_schedule=3x",
                                         "X101-FPN_schedule=1x", "X101-FPN_schedule=3x"]
    assert [r.config["schedule"]["name"] for r in p.runs] == ["1x", "3x", "1x", "3x"]


def test_runs_sharing_a_folder_are_refused(tmp_path):
    with pytest.raises(SweepError, match="share a folder"):
        plan(tmp_path, "+experiment=grid9", "hydra.sweep.subdir=all_in_one")


def test_bad_sweeps_exit_2_with_a_message(tmp_path, capsys):
    assert main([f"dataset_dir={tmp_path}", "+experiment=no_such_experiment"]) == 2
    assert "no_such_experiment" in capsys.readouterr().err
    assert main([f"dataset_dir={tmp_path}", "+experiment=grid9", "solver.no_such_key=1"]) == 2


def test_a_run_config_that_cannot_resolve_is_refused_naming_the_run(tmp_path, capsys):
    # no dataset_dir: the run would stop the whole multirun at its start; the plan says so first
    args = [f"hydra.sweep.dir={tmp_path / 'sweep'}", "+experiment=smoke", "backbone=r50_fpn"]
    with pytest.raises(SweepError, match=r"run R50-FPN: its config cannot be resolved: MissingMandatoryValue: "
                                         r".*dataset_dir"):
        plan_sweep(args)
    assert main(args) == 2 and "run R50-FPN" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()  # refused before anything was written


def test_an_unexpected_error_in_the_run_config_propagates_naming_the_run(tmp_path, monkeypatch):
    import benchmark.training.config

    def broken(cfg):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(benchmark.training.config, "run_config", broken)
    with pytest.raises(ZeroDivisionError, match="a bug") as e:
        plan(tmp_path, "+experiment=smoke", "backbone=r50_fpn")
    assert "planned run R50-FPN" in " ".join(getattr(e.value, "__notes__", []))


def test_the_planned_config_sees_the_runs_output_dir(tmp_path):
    # a value the run resolves from Hydra's runtime resolves the same way in the plan
    run = plan(tmp_path, "+experiment=smoke", "backbone=r50_fpn", "+note=${hydra:runtime.output_dir}").runs[0]
    assert run.config["note"] == run.run_dir == str(tmp_path / "sweep" / "R50-FPN")


# ----------------------------------------------------------------------------- launchers
def compose_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir

    register_launchers(CONF_DIR)  # what the sweep does before Hydra composes
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["dataset_dir=/x", "+experiment=smoke", *overrides],
                       return_hydra_config=True).hydra


def test_launcher_choices():
    assert compose_hydra().launcher._target_.endswith("BasicLauncher")  # the default: one run after another

    slurm = compose_hydra("hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                          "hydra.launcher.account=proj", '+hydra.launcher.srun_args=["--cpu-bind=none"]').launcher
    assert slurm._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (slurm.partition, slurm.account, slurm.gpus_per_node, slurm.tasks_per_node) == ("gpu", "proj", 1, 1)
    assert slurm.timeout_min > 0 and slurm.cpus_per_task > 0 and slurm.mem_gb > 0
    assert list(slurm.srun_args) == ["--cpu-bind=none"]  # hydra#2719: accepted with a `+`
    defaults = compose_hydra("hydra/launcher=submitit_slurm").launcher
    assert defaults.account is None and defaults.partition is None

    joblib = compose_hydra("hydra/launcher=joblib", "hydra.launcher.n_jobs=3").launcher
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == 3
    # n_jobs by default: every GPU this machine has x jobs_per_gpu (1 by default), 2 without a GPU
    import torch

    gpus = torch.cuda.device_count()
    assert compose_hydra("hydra/launcher=joblib").launcher.n_jobs == (gpus * 1 if gpus else 2)
    assert compose_hydra("hydra/launcher=joblib", "jobs_per_gpu=4").launcher.n_jobs == (gpus * 4 if gpus else 2)
    assert compose_hydra("hydra/launcher=submitit_local").launcher._target_.endswith("LocalLauncher")


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "submitit_slurm"])
def test_launcher_configs_need_no_schema_matching(launcher):
    import warnings

    from hydra.core.config_store import ConfigStore

    # lungbench's settings live under their own file names; the plugins' names select them
    register_launchers(CONF_DIR)
    plugin_names = set(ConfigStore.instance().list("hydra/launcher"))
    assert {"joblib.yaml", "submitit_local.yaml", "submitit_slurm.yaml"} <= plugin_names
    assert not [p.name for p in (CONF_DIR / "hydra" / "launcher").glob("*.yaml") if p.name in plugin_names]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Hydra's "validated against ConfigStore schema" note included
        ours = compose_hydra(f"hydra/launcher={launcher}").launcher
        direct = compose_hydra(f"hydra/launcher=lungbench_{launcher}").launcher
    assert ours == direct
    if launcher == "joblib":
        from omegaconf import OmegaConf

        assert OmegaConf.to_container(ours)["n_jobs"] == "${lungbench_jobs:${jobs_per_gpu}}"  # GPUs x jobs_per_gpu
    else:
        assert ours.timeout_min == 240  # lungbench's, not the plugin's 60
    assert register_launchers(CONF_DIR) == ["joblib", "submitit_local", "submitit_slurm"]  # idempotent
    assert compose_hydra(f"hydra/launcher={launcher}").launcher == ours


def test_joblib_runs_as_many_jobs_as_gpu_slots(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert compose_hydra("hydra/launcher=joblib", "jobs_per_gpu=4").launcher.n_jobs == 8
    assert compose_hydra("hydra/launcher=joblib").launcher.n_jobs == 2  # jobs_per_gpu: 1
    assert compose_hydra("hydra/launcher=joblib", "hydra.launcher.n_jobs=3").launcher.n_jobs == 3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # no GPU: two at once, whatever jobs_per_gpu
    assert compose_hydra("hydra/launcher=joblib").launcher.n_jobs == 2
    assert compose_hydra("hydra/launcher=joblib", "jobs_per_gpu=4").launcher.n_jobs == 2
    assert compose_hydra("hydra/launcher=joblib", "hydra.launcher.n_jobs=3").launcher.n_jobs == 3


def test_joblib_runs_keep_their_dataloader_workers(tmp_path):
    # hydra#964 is avoided by starting DataLoader workers with fork: the planned config keeps them
    cfgs = [plan(tmp_path, "+experiment=smoke", "backbone=r50_fpn", "solver.num_workers=2", *launcher).runs[0].config
            for launcher in ([], ["hydra/launcher=joblib"])]
    assert [c["solver"]["num_workers"] for c in cfgs] == [2, 2]


# ----------------------------------------------------------------------------- summary
def write_result(run_dir: Path, **fields) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").write_text(json.dumps({"schema": 1, **fields}))


def test_statuses_summary_and_sweep_file(tmp_path):
    runs = [PlannedRun(label, str(tmp_path / label), [f"backbone={label}"])
            for label in ("R50-FPN", "R50-C4", "R50-DC5", "X101-C4", "R101-FPN")]
    write_result(tmp_path / "R50-FPN", status="ok", error=None)
    write_result(tmp_path / "R50-C4", status="failed",
                 error={"type": "FloatingPointError", "where": "train iter 1",
                        "message": "Loss became infinite or NaN at iteration=1!\nloss_dict = {...}"})
    (tmp_path / "R50-DC5").mkdir()
    (tmp_path / "R50-DC5" / "result.json").write_text('{"status": "ok", ')  # cut short
    # an ok result recorded with another config is not this sweep's run
    runs[4].config = {"solver": {"max_iter": 2}, "seed": 0}
    write_result(tmp_path / "R101-FPN", status="ok", error=None, config={"solver": {"max_iter": 20}, "seed": 0})

    plan = read_statuses(SweepPlan(sweep_dir=str(tmp_path), overrides=["+experiment=x"], runs=runs))
    assert [r.status for r in plan.runs] == ["ok", "failed", "failed", "missing", "failed"]
    line = sweep_summary(plan.runs)
    assert line.startswith("5 runs: 1 ok, 3 failed (R50-C4: FloatingPointError: Loss became infinite or NaN "
                           "at iteration=1!; R50-DC5: unreadable ")
    assert "R101-FPN: StaleResult: folder holds a finished run that is not this one (solver.max_iter, dataset" in line
    assert line.endswith(", 1 missing (X101-C4)") and "\n" not in line

    out = write_sweep_file(plan, hydra_rc=0)
    doc = json.loads(out.read_text())
    assert doc["summary"] == line
    assert [(r["label"], r["run_dir"], r["status"]) for r in doc["runs"]][:4] == [
        ("R50-FPN", "R50-FPN", "ok"), ("R50-C4", "R50-C4", "failed"), ("R50-DC5", "R50-DC5", "failed"),
        ("X101-C4", "X101-C4", "missing")]
    assert sweep_summary(plan.runs[:1]) == "1 run: 1 ok"


# ----------------------------------------------------------------------------- real sweeps (slow)
def run_sweep(*args: str, timeout: int = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "benchmark.sweep", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=None if env is None else {**os.environ, **env})
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.strip().splitlines()[-1]


def read(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


SMOKE = ["+experiment=smoke", "solver.max_iter=2", "measure.flops=false"]


@pytest.mark.slow
def test_failed_run_does_not_stop_the_sweep_and_rerun_redoes_only_it(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    held = tmp_path / "held.json"  # fold 1 cannot run without its training split
    shutil.move(data / "annotations" / "patient_kfold_f1_train.json", held)
    sweep_dir = tmp_path / "sweep"
    args = [*SMOKE, f"dataset_dir={data}", f"hydra.sweep.dir={sweep_dir}", "backbone=r50_fpn", "split.fold=0,1"]

    first = run_sweep(*args)
    assert first.returncode == 1
    assert last_line(first).startswith("2 runs: 1 ok, 1 failed (R50-FPN_fold=1: ")
    ok_dir, failed_dir = sweep_dir / "R50-FPN_fold=0", sweep_dir / "R50-FPN_fold=1"
    ok, failed = read(ok_dir), read(failed_dir)
    assert (ok["status"], ok["dataset"]["fold"], ok["experiment"]) == ("ok", 0, "smoke")
    assert failed["status"] == "failed" and failed["error"]["type"] and failed["dataset"]["fold"] == 1
    assert json.loads((sweep_dir / "sweep.json").read_text())["summary"] == last_line(first)
    ok_mtime = (ok_dir / "result.json").stat().st_mtime_ns

    shutil.move(held, data / "annotations" / "patient_kfold_f1_train.json")  # fix the cause, sweep again
    second = run_sweep(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert last_line(second) == "2 runs: 2 ok"
    assert (ok_dir / "result.json").stat().st_mtime_ns == ok_mtime  # finished run skipped, file untouched
    redone = read(failed_dir)
    assert redone["status"] == "ok" and redone["started_at"] > failed["started_at"]

    # the finished sweep again, with knobs that do not change what a run is (keeping checkpoints,
    # another worker count): nothing is stale, nothing is redone, exit 0
    mtimes = [(d / "result.json").stat().st_mtime_ns for d in (ok_dir, failed_dir)]
    third = run_sweep(*args, "keep_checkpoint=true", "solver.num_workers=1")
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-2000:]
    assert last_line(third) == "2 runs: 2 ok" and "(2 already ok: skipped)" in third.stdout
    assert [(d / "result.json").stat().st_mtime_ns for d in (ok_dir, failed_dir)] == mtimes


@pytest.mark.slow
def test_joblib_runs_two_at_once_with_dataloader_workers(tiny_dataset, tmp_path):
    import torch

    sweep_dir = tmp_path / "sweep"
    # Two at once on any machine: n_jobs=2 by hand (its default depends on the GPUs), and two GPU
    # slots per GPU so that on one GPU the second run does not wait for the first one's slot.
    # The slots live in this test's own folder: no other sweep on the machine holds them.
    proc = run_sweep(*SMOKE, f"dataset_dir={tiny_dataset}", f"hydra.sweep.dir={sweep_dir}", "backbone=r50_fpn",
                     "seed=0,1", "solver.num_workers=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "jobs_per_gpu=2", env={"LUNGBENCH_GPU_SLOTS": str(tmp_path / "slots")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert last_line(proc) == "2 runs: 2 ok"
    results = [read(sweep_dir / f"R50-FPN_seed={s}") for s in (0, 1)]
    assert [r["seed"] for r in results] == [0, 1]
    assert [r["config"]["solver"]["num_workers"] for r in results] == [2, 2]  # fork: no hydra#964
    spans = [(dt.datetime.fromisoformat(r["started_at"]), dt.datetime.fromisoformat(r["finished_at"]))
             for r in results]
    assert max(s for s, _ in spans) < min(f for _, f in spans), f"runs did not overlap: {spans}"
    assert len({os.path.realpath(sweep_dir / f"R50-FPN_seed={s}") for s in (0, 1)}) == 2
    # device=auto: on CUDA each run held one of the slots 0, 1 (slot s on GPU s % GPUs); on the CPU none
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert [r["env"]["device"] for r in results] == ["cuda" if gpus else "cpu"] * 2
    if gpus:
        assert sorted(r["env"]["gpu_slot"] for r in results) == sorted(s % gpus for s in (0, 1))
    else:
        assert all("gpu_slot" not in r["env"] for r in results)
        # the two runs share the cores: half the threads each, not a full pool apiece
        assert [r["env"]["torch_threads"] for r in results] == [max(1, (os.cpu_count() or 1) // 2)] * 2
