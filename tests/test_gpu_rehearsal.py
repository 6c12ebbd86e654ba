"""The first hour on an offline GPU machine, rehearsed on this one (slow tier).

1. A Python like that machine's: a fresh venv whose only packages are the target's (torch,
   torchvision, numpy, scipy, ... and what they require: perf/bundle.py's TARGET_HAS), none of
   lungbench's own stack. They are this .venv's installed files, linked into one folder that a
   .pth file puts on the new Python's path: torch with its CUDA libraries is gigabytes that no
   test should copy or download, and linking the exact distributions (dist-info included) gives
   that Python what the GPU machine has and nothing more.
2. What is copied there: the checkout's tracked files and the bundle `make gpu-bundle` builds
   (perf/wheels.sh, for that Python's version); its size is asserted under 60 MiB.
3. With the network cut (`unshare -n`), `perf/gpu_check.sh --dry-run` installs the bundle and
   runs to the end, writing gpu_check.json.

And a check killed half-way: SIGTERM after its first level leaves that level's rows.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perf import bundle as B

REPO = Path(__file__).resolve().parent.parent
LIMIT_MIB = 60
PY_XY = "%d.%d" % sys.version_info[:2]

pytestmark = pytest.mark.slow


def _clean_env(**extra: str) -> dict:
    """The environment of a fresh shell on the target: none of this session's Python paths."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LUNGBENCH_"))}
    env.update(extra)
    return env


def _can_cut_the_network() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def link_target_packages(dest: Path) -> list[str]:
    """Link into ``dest`` the installed files of TARGET_HAS and everything they require (this
    environment's copies); returns the distributions linked."""
    names = B.closure(B.TARGET_HAS, B.installed_requires, None)
    dest.mkdir(parents=True)
    for name in names:
        dist = md.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            src = Path(dist.locate_file(top))
            if src.exists() and not (dest / top).exists():
                (dest / top).symlink_to(src)
    return sorted(names)


def target_python(tmp: Path) -> Path:
    """A fresh venv (with pip, as the GPU machine's Python has) holding the target's packages."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(tmp / "py")], check=True, timeout=300, env=_clean_env())
    py = tmp / "py" / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    linked = link_target_packages(tmp / "target-packages")
    assert "torch" in linked and "hydra-core" not in linked
    (Path(purelib) / "target_packages.pth").write_text(str(tmp / "target-packages") + "\n")
    return py


def copy_checkout(dest: Path) -> int:
    """The checkout's tracked files (what is copied to the GPU machine); their bytes."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    total = 0
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
            total += src.stat().st_size
    return total


@pytest.mark.skipif(not _can_cut_the_network(), reason="unshare -n is not allowed here")
def test_an_offline_python_with_torch_only_installs_the_bundle_and_runs_the_check(tmp_path):
    py = target_python(tmp_path)
    probe = subprocess.run([str(py), "-c", "import torch, torchvision, numpy, matplotlib, pytest\n"
                            "import importlib.util as u\n"
                            "print([m for m in ('hydra', 'detectron2', 'pycocotools', 'nibabel', "
                            "'fvcore') if u.find_spec(m)])"],
                           capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stdout + probe.stderr

    checkout = tmp_path / "checkout"
    checkout_b = copy_checkout(checkout)
    # the bundle for that Python, built where PyPI is reachable (`make gpu-bundle`)
    build = subprocess.run(["bash", str(REPO / "perf" / "wheels.sh")], cwd=REPO, capture_output=True,
                           text=True, timeout=1800,
                           env=dict(os.environ, PYTHON=sys.executable, TARGET_PY=PY_XY,
                                    DEST=str(checkout / ".whl")))
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = sorted((checkout / ".whl").glob("*.whl"))
    bundle_b = sum(w.stat().st_size for w in wheels)
    size_line = next(line for line in build.stdout.splitlines() if " MiB of at most " in line)
    print(size_line)
    assert (bundle_b + checkout_b) / 2**20 < LIMIT_MIB, size_line
    names = {B.canon(w.name.split("-")[0]) for w in wheels}
    assert {"detectron2", "hydra-core", "pycocotools", "faster-coco-eval", "nibabel"} <= names
    assert not names & {"torch", "torchvision", "numpy", "scipy", "pytest", "simpleitk", "pytest-timeout"}

    out = tmp_path / "out"
    env = _clean_env(PYTHON=str(py), LUNGBENCH_SITE=str(tmp_path / "site"),
                     LUNGBENCH_CACHE=str(tmp_path / "cache"))
    t0 = time.monotonic()
    run = subprocess.run(["unshare", "-n", "--", "bash", str(checkout / "perf" / "gpu_check.sh"),
                          "--dry-run", "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=1500)
    log = run.stdout[-4000:] + run.stderr[-4000:]
    assert run.returncode == 0, log
    assert f"installing {len(wheels)} wheel(s) from .whl/" in run.stdout, log
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["finished"] is True and doc["dry_run"] is True
    assert all(r["ok"] for lv in doc["levels"] for r in lv["runs"]), log
    assert doc["env"]["python"].startswith(PY_XY)
    print(f"offline dry run: {time.monotonic() - t0:.0f} s, {len(wheels)} wheels, "
          f"{bundle_b / 2**20:.1f} MiB + checkout {checkout_b / 2**20:.1f} MiB")


def test_a_check_stopped_after_its_first_level_leaves_that_level(tmp_path):
    out = tmp_path / "out"
    # --work under tmp_path: every sweep's command line names it (see the last assertion)
    proc = subprocess.Popen(["bash", str(REPO / "perf" / "gpu_check.sh"), "--dry-run", "--out", str(out),
                             "--work", str(tmp_path / "work")],
                            cwd=tmp_path, env=dict(os.environ, PYTHON=sys.executable),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    first = None
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                doc = json.loads((out / "gpu_check.json").read_text())
            except (OSError, ValueError):
                doc = {}
            if doc.get("written_after"):
                first = doc["written_after"]
                break
            time.sleep(0.5)
        assert first == "fp32 k=1", (first, proc.poll())
        time.sleep(2)  # the next level's sweep is under way
        proc.send_signal(signal.SIGTERM)  # the check itself (gpu_check.sh execs it)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, stdout[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["finished"] is False and doc["stopped"] == "stopped by SIGTERM/SIGINT"
    lv1 = doc["levels"][0]
    assert (lv1["precision"], lv1["k"]) == ("fp32", 1) and not lv1["cut_short"]
    assert len(lv1["runs"]) == len(doc["plan"]["backbones"]) and all(r["ok"] for r in lv1["runs"])
    assert (out / "runs" / "fp32_k1" / "sweep.json").is_file()
    rest = doc["levels"][1:]
    assert rest and all(lv.get("cut_short") == "stopped (SIGTERM)" or lv.get("skipped") == "stopped (SIGTERM)"
                        for lv in rest), rest
    md = (out / "gpu_check.md").read_text()
    assert "**Partial**" in md and "| R50-FPN | " in md
    # the stopped sweep's processes are gone with it
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "work")], capture_output=True,
                          text=True).stdout.split()
    assert left == []


def test_the_check_stops_inside_its_budget(tmp_path):
    out, budget = tmp_path / "out", 45
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(REPO / "perf" / "gpu_check.sh"), "--dry-run", "--out", str(out),
                        "--budget-s", str(budget), "--work", str(tmp_path / "work")],
                       cwd=tmp_path, env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
                       text=True, timeout=600)
    wall = time.monotonic() - t0
    doc = json.loads((out / "gpu_check.json").read_text())
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]  # not everything measured
    assert doc["wall_s"] <= budget, doc["wall_s"]
    assert wall <= budget + 30, wall  # + starting Python, the bundle check and imports
    assert doc["finished"] is True and doc["skipped"], doc["skipped"]
    # whatever was cut or skipped is named: the budget, never a silent drop
    for lv in doc["levels"]:
        assert lv.get("skipped", "").startswith("time budget") or lv.get("cut_short") in (None, "time budget")
    assert "Skipped or cut short" in (out / "gpu_check.md").read_text()
    assert subprocess.run(["pgrep", "-f", str(tmp_path / "work")], capture_output=True,
                          text=True).stdout.split() == []
