"""Slurm for real: a single-node cluster on localhost (tests/slurm_cluster.py) runs jobs with
accounting, and a smoke sweep of two backbones goes through Hydra's submitit_slurm launcher.

Where the cluster cannot start (no root for apt, daemons refused) the tests skip and say why;
CI sets LUNGBENCH_REQUIRE_SLURM=1 to turn that into a failure.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm_cluster import SETUP_SCRIPT, missing_binaries, slurm_cluster  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]


def test_setup_script_is_idempotent():
    assert subprocess.run(["bash", "-n", str(SETUP_SCRIPT)]).returncode == 0
    if missing_binaries():
        pytest.skip(f"{SETUP_SCRIPT.name} would install packages here ({', '.join(missing_binaries())}): "
                    "the slow Slurm tests do that")
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "already installed" in proc.stdout and time.monotonic() - t0 < 10


def sacct_state(cluster, job_id: str) -> str:
    p = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], env=cluster.env(),
                       capture_output=True, text=True, timeout=30)
    return p.stdout.strip().split("\n")[0].split()[0] if p.stdout.strip() else ""


def wait_state(cluster, job_id: str, states: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = sacct_state(cluster, job_id)
        if state in states:
            return state
        time.sleep(0.3)
    raise AssertionError(f"job {job_id}: state {state!r} after {timeout} s, wanted {states}")


@pytest.mark.slow
def test_cluster_runs_cancels_and_accounts_jobs(slurm_cluster, tmp_path):
    env = slurm_cluster.env()

    def sbatch(*args: str) -> str:
        p = subprocess.run(["sbatch", "--parsable", *args], env=env, capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip().split(";")[0]

    done = sbatch("-o", str(tmp_path / "hi.out"), "--wrap", "echo hello from $SLURMD_NODENAME")
    assert wait_state(slurm_cluster, done, {"COMPLETED", "FAILED"}) == "COMPLETED"
    assert (tmp_path / "hi.out").read_text().strip() == f"hello from {slurm_cluster.host}"

    # a killed job must be reported as ended, or submitit would wait for it forever
    slow = sbatch("-o", "/dev/null", "--wrap", "sleep 300")
    wait_state(slurm_cluster, slow, {"RUNNING"})
    subprocess.run(["scancel", slow], env=env, check=True, timeout=30)
    assert wait_state(slurm_cluster, slow, {"CANCELLED", "CANCELLED+"}).startswith("CANCELLED")


@pytest.mark.slow
def test_smoke_sweep_through_submitit_slurm(slurm_cluster, tiny_dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.sweep", "+experiment=smoke", f"dataset_dir={tiny_dataset}",
         f"hydra.sweep.dir={sweep_dir}", "backbone=r50_fpn,r101_fpn", "solver.max_iter=2", "measure.flops=false",
         "hydra/launcher=submitit_slurm", f"hydra.launcher.partition={slurm_cluster.partition}",
         # a CPU-only node: no GPU to ask for, one core per run so both run at once
         "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=4",
         "hydra.launcher.timeout_min=30", '+hydra.launcher.srun_args=["--cpu-bind=none"]'],
        cwd=REPO, env=slurm_cluster.env(), capture_output=True, text=True, timeout=1500)
    wall = time.monotonic() - t0
    print(proc.stdout[-3000:], proc.stderr[-3000:], f"\nslurm sweep wall: {wall:.1f} s")
    for b in ("R50-FPN", "R101-FPN"):
        if (sweep_dir / b / "result.json").exists():
            print(b, json.loads((sweep_dir / b / "result.json").read_text()).get("timing"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "2 runs: 2 ok"
    results = [json.loads((sweep_dir / b / "result.json").read_text()) for b in ("R50-FPN", "R101-FPN")]
    assert [(r["backbone"], r["status"], r["experiment"]) for r in results] == [
        ("R50-FPN", "ok", "smoke"), ("R101-FPN", "ok", "smoke")]

    # both ran as Slurm jobs: submitit's scripts carry the srun_args (hydra#2719), sacct says COMPLETED
    scripts = sorted((sweep_dir / ".submitit").rglob("*_submission.sh"))
    assert scripts, "no sbatch script written"
    for script in scripts:
        srun = [ln for ln in script.read_text().splitlines() if ln.startswith("srun ")]
        assert srun and "--cpu-bind=none" in srun[0]
        assert "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK" in script.read_text()  # the launcher's setup
    assert [r["env"]["torch_threads"] for r in results] == [1, 1]  # = cpus_per_task, not the node's cores
    jobs = sorted({p.parent.name for p in (sweep_dir / ".submitit").glob("*/*_result.pkl")})  # array tasks
    assert len(jobs) == 2 and all(wait_state(slurm_cluster, j, {"COMPLETED"}, 30) == "COMPLETED" for j in jobs)

    if importlib.util.find_spec("reports.build") is not None:
        rep = subprocess.run([sys.executable, "-m", "reports.build", str(sweep_dir)], cwd=REPO,
                             capture_output=True, text=True, timeout=600)
        assert rep.returncode == 0, rep.stderr[-3000:]
        assert (sweep_dir / "report" / "report.html").is_file()
        assert (sweep_dir / "report" / "runs.csv").read_text().count("\n") >= 3  # header + 2 runs
