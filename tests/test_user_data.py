"""Users' data is never lost and runs are never mixed.

Each test puts "precious" files where a user might have them, runs what a user types, and
checks every one of those files byte for byte afterwards (or that the command was refused
with a message naming the folder). Make targets run in a sandbox: a temp folder with links
to the repository, so its default ``work/`` is the sandbox's own.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from converters import phantom
from converters.convert import convert
from converters.errors import ConversionError
from contracts.fsutil import MARKER, NotOwned, OutputBusy, claim, output_lock, read_marker

REPO = Path(__file__).resolve().parent.parent
CFG = {"workers": 1}


# ----------------------------------------------------------------------------- helpers
def snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file below the folders (links recorded by target), keyed by path."""
    out = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in files:
                p = Path(root) / name
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            for d in dirs:
                if (Path(root) / d).is_symlink():
                    out[str(Path(root) / d)] = "link -> " + os.readlink(Path(root) / d)
    return out


def precious(folder: Path, *extra: str) -> Path:
    """A user's folder: a file, a nested file, and an MSD/nnU-Net style dataset.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "precious.txt").write_text(f"years of work in {folder.name}\n")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "notes.md").write_text("do not lose\n")
    (folder / "dataset.json").write_text('{"name": "Task100_Lung", "labels": {"0": "background"}}\n')
    for name in extra:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"user bytes " + name.encode())
    return folder


def user_raw(tmp: Path) -> Path:
    """A raw dataset folder as a user has it: phantom volumes without lungbench's marker."""
    src = phantom.generate(tmp / "gen" / "phantom", preset="tiny", seed=0)
    raw = tmp / "ct" / "covid"
    shutil.copytree(src, raw)
    (raw / MARKER).unlink()
    (raw / "my_notes.txt").write_text("scanner settings\n")
    return raw


@pytest.fixture()
def sandbox(tmp_path) -> Path:
    """A folder in which `make` sees the repository but writes its default work/ locally."""
    box = tmp_path / "box"
    box.mkdir()
    for name in ("Makefile", ".venv", "benchmark", "contracts", "converters", "reports", "conf", "perf",
                 "pyproject.toml"):
        (box / name).symlink_to(REPO / name)
    return box


def make(box: Path, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    e.update(env or {})
    # the venv is built (make test depends on it); the stamp's prerequisites are links
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.lungbench-stamp", *args],
                          cwd=box, env=e, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- 1: sources
@pytest.mark.slow
def test_make_data_with_data_root_converts_it_and_never_writes_it(sandbox, tmp_path):
    raw = user_raw(tmp_path)
    before = snapshot(raw)
    out = tmp_path / "out" / "covid"
    p = make(sandbox, "data", f"DATA_ROOT={raw}", f"DATA_OUT={out}", "ARGS=workers=1")
    assert p.returncode == 0, p.stderr
    assert snapshot(raw) == before
    assert json.loads((out / "dataset.json").read_text())["raw_root"] == str(raw)

    p = make(sandbox, "data", "DATA=phantom", f"DATA_ROOT={raw}", f"DATA_OUT={tmp_path / 'o2'}")
    assert p.returncode != 0 and "data.root" in p.stderr and "phantom" in p.stderr
    assert snapshot(raw) == before and not (tmp_path / "o2").exists()

    # an exported DATA_ROOT is not a make variable: a plain make data makes the phantom
    p = make(sandbox, "data", "ARGS=workers=1 data.generate.preset=tiny", env={"DATA_ROOT": str(raw)})
    assert p.returncode == 0, p.stderr
    assert snapshot(raw) == before
    assert (sandbox / "work" / "data" / "phantom" / "dataset.json").is_file()


def test_phantom_with_a_root_is_refused_before_anything_is_written(tmp_path):
    from converters.config import load_config
    from converters.convert import run

    raw = precious(tmp_path / "ct")
    before = snapshot(raw)
    cfg = load_config({"out": str(tmp_path / "out"), "data": {"name": "phantom", "root": str(raw)}})
    cfg.data.generate = {"preset": "tiny", "seed": 0}
    with pytest.raises(ConversionError, match="data.root"):
        run(cfg)
    assert snapshot(raw) == before and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 2: make clean
@pytest.mark.slow
def test_make_clean_deletes_only_marked_outputs(sandbox, tmp_path):
    hpc = precious(tmp_path / "hpc_work")
    before = snapshot(hpc)
    assert make(sandbox, "data", "ARGS=workers=1 data.generate.preset=tiny").returncode == 0
    work = sandbox / "work"
    (work / "mine.txt").write_text("a user's file in work/\n")
    (work / "data" / "keep").mkdir()
    (work / "data" / "keep" / "x.nii").write_bytes(b"raw bytes")

    p = make(sandbox, "clean", env={"WORK": str(hpc)})  # an exported $WORK is not make's WORK
    assert p.returncode == 0, p.stderr
    assert snapshot(hpc) == before
    assert not (work / "data" / "phantom").exists() and not (work / "raw").exists()
    assert (work / "mine.txt").read_text() == "a user's file in work/\n"
    assert (work / "data" / "keep" / "x.nii").read_bytes() == b"raw bytes"

    p = make(sandbox, "clean", "WORK=")
    assert p.returncode != 0 and "WORK is empty" in p.stderr
    assert (work / "mine.txt").exists()
    p = make(sandbox, "clean", f"WORK={hpc}")  # a folder with no lungbench output: nothing goes
    assert p.returncode == 0 and snapshot(hpc) == before


def test_clean_refuses_root_and_home(tmp_path):
    for work in ("", "/", str(Path.home())):
        p = subprocess.run([sys.executable, "-m", "converters.clean", work], cwd=REPO,
                           capture_output=True, text=True)
        assert p.returncode == 2 and "refusing" in p.stderr


def test_make_never_takes_outputs_from_the_environment(sandbox, tmp_path):
    env = {v: str(tmp_path / "env" / v) for v in ("WORK", "DATA_OUT", "RUN_DIR", "SWEEP_DIR", "SWEEP")}
    env |= {"DATA_ROOT": str(tmp_path / "env" / "raw"), "DATA": "covid19_ct_seg"}
    for target in ("data", "train", "sweep", "report", "clean", "demo", "download"):
        p = make(sandbox, "-n", target, env=env)
        assert p.returncode == 0, p.stderr
        assert str(tmp_path / "env") not in p.stdout, (target, p.stdout)
    assert "data=phantom" in make(sandbox, "-n", "data", env=env).stdout


# ----------------------------------------------------------------------------- 3: temp names
def test_backups_named_like_temps_are_never_deleted(tiny_raw, tmp_path):
    out = tmp_path / "covid"
    for name in ("covid.old-2020", "covid.tmp-1", ".covid.lungbench-tmp-1-abc", ".covid.lungbench-old-1-abc"):
        precious(tmp_path / name)  # pid 1 is alive, 2020 most likely not: neither may matter
    before = snapshot(tmp_path)
    convert(tiny_raw, out, CFG)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".covid.lungbench-tmp", ".covid.lungbench-old"))) \
        == [".covid.lungbench-old-1-abc", ".covid.lungbench-tmp-1-abc"]


def test_own_stale_temps_of_dead_processes_are_cleaned(tiny_raw, tmp_path):
    out = tmp_path / "covid"
    convert(tiny_raw, out, CFG)
    # what a killed conversion leaves: a marked temp folder of a process that is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".covid.lungbench-tmp-{dead}-abcdef"
    shutil.copytree(out, stale)
    convert(tiny_raw, out, {**CFG, "slices": {"keep": "all"}})
    assert not stale.exists()


# ----------------------------------------------------------------------------- 4, 5: outputs
def test_msd_folder_as_output_is_refused(tiny_raw, tmp_path):
    msd = precious(tmp_path / "Task100_Lung", "imagesTr/lung_001.nii.gz")
    before = snapshot(msd)
    with pytest.raises(NotOwned, match="not made by lungbench"):
        convert(tiny_raw, msd, CFG)
    assert snapshot(msd) == before


def test_output_equal_to_or_inside_the_source_is_refused(tmp_path):
    raw = user_raw(tmp_path)
    (raw / "dataset.json").write_text('{"name": "mine"}')
    before = snapshot(raw)
    for out in (raw, raw / "coco", raw.parent):
        with pytest.raises(ConversionError, match="overlap"):
            convert(raw, out, CFG)
    assert snapshot(raw) == before


def test_rebuild_refuses_while_the_dataset_holds_foreign_files(tiny_raw, tmp_path):
    out = convert(tiny_raw, tmp_path / "covid", CFG)
    (out / "raw").mkdir()
    (out / "raw" / "copy.nii.gz").write_bytes(b"my copy")
    (out / "notes.txt").write_text("notes")
    (out / "images" / "phantom_000" / "extra.png").write_bytes(b"mine")
    before = snapshot(out)
    with pytest.raises(NotOwned, match="raw/copy.nii.gz"):
        convert(tiny_raw, out, {**CFG, "slices": {"keep": "all"}})
    assert snapshot(out) == before
    for p in ("raw", "notes.txt", "images/phantom_000/extra.png"):
        shutil.rmtree(out / p) if (out / p).is_dir() else (out / p).unlink()
    convert(tiny_raw, out, {**CFG, "slices": {"keep": "all"}})  # nothing foreign: rebuilt
    assert json.loads((out / "dataset.json").read_text())["slices"]["keep"] == "all"
    assert read_marker(out)["kind"] == "dataset"


def test_old_unmarked_dataset_is_read_but_never_replaced(tiny_raw, tmp_path):
    out = convert(tiny_raw, tmp_path / "covid", CFG)
    (out / MARKER).unlink()  # as an older lungbench left it
    before = snapshot(out)
    assert convert(tiny_raw, out, CFG) == out  # up to date: read only
    with pytest.raises(NotOwned):
        convert(tiny_raw, out, {**CFG, "slices": {"keep": "all"}})
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- 6: phantom raw
def test_phantom_checks_the_output_before_its_raw_folder(tmp_path):
    from converters.config import load_config
    from converters.convert import run

    out = precious(tmp_path / "X")
    raw = precious(tmp_path / "raw" / "Y")  # the raw folder of a phantom at Y
    before = snapshot(tmp_path)
    cfg = load_config({"out": str(out), "data": {"name": "phantom"}, "workers": 1})
    cfg.data.generate = {"preset": "tiny", "seed": 0}
    with pytest.raises(NotOwned, match=str(out)):
        run(cfg)
    assert snapshot(tmp_path) == before
    cfg.out = str(tmp_path / "Y")  # a new output, but the raw folder is the user's
    with pytest.raises(NotOwned, match="phantom"):
        run(cfg)
    assert snapshot(tmp_path) == before and not (tmp_path / "Y").exists()


# ----------------------------------------------------------------------------- 8: run/sweep dirs
def test_train_refuses_a_users_run_folder(tmp_path, tiny_dataset):
    run_dir = precious(tmp_path / "myrun", "result.json", ".hydra/config.yaml", "d2/model_final.pth")
    before = snapshot(run_dir)
    p = subprocess.run([sys.executable, "-m", "benchmark.train", f"dataset_dir={tiny_dataset}",
                        f"hydra.run.dir={run_dir}"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 2 and str(run_dir) in p.stderr and "not made by lungbench" in p.stderr
    assert snapshot(run_dir) == before


def test_sweep_refuses_a_users_sweep_folder(tmp_path, tiny_dataset):
    sweep_dir = precious(tmp_path / "mysweep", "sweep.json", "R50-FPN/result.json")
    before = snapshot(sweep_dir)
    p = subprocess.run([sys.executable, "-m", "benchmark.sweep", "+experiment=smoke", "backbone=r50_fpn",
                        f"dataset_dir={tiny_dataset}", f"hydra.sweep.dir={sweep_dir}"],
                       cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 2 and str(sweep_dir) in p.stderr
    assert snapshot(sweep_dir) == before
    # a lungbench sweep folder with a user's folder where a run would go: refused too
    own = claim(tmp_path / "own", "sweep", "SWEEP_DIR")
    precious(own / "R50-FPN")
    before = snapshot(own)
    p = subprocess.run([sys.executable, "-m", "benchmark.sweep", "+experiment=smoke", "backbone=r50_fpn",
                        f"dataset_dir={tiny_dataset}", f"hydra.sweep.dir={own}"], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 2 and "R50-FPN" in p.stderr, p.stderr
    assert snapshot(own) == before


# ----------------------------------------------------------------------------- 9: one writer, links
def test_second_writer_gets_a_clear_error(tiny_raw, tmp_path):
    out = tmp_path / "covid"
    with output_lock(out, "DATA_OUT"):
        with pytest.raises(OutputBusy, match="being written by pid"):
            convert(tiny_raw, out, CFG)
        p = subprocess.run([sys.executable, "-m", "converters.convert", "data=covid19_ct_seg",
                            f"data.root={tiny_raw}", f"out={out}", "workers=1"], cwd=REPO,
                           capture_output=True, text=True)
        assert p.returncode == 1 and "being written" in p.stderr
    assert not out.exists()
    convert(tiny_raw, out, CFG)  # the lock is gone with its holder


def test_symlinked_output_is_written_through(tiny_raw, tmp_path):
    target = tmp_path / "fast_disk" / "covid"
    target.parent.mkdir()
    link = tmp_path / "covid"
    link.symlink_to(target)
    convert(tiny_raw, link, CFG)
    convert(tiny_raw, link, {**CFG, "slices": {"keep": "all"}})
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads((target / "dataset.json").read_text())["slices"]["keep"] == "all"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["covid", "fast_disk"]


# ----------------------------------------------------------------------------- 10, 11: runs not mixed
def _finished_run(run_dir: Path, dataset: Path, overrides: list[str]) -> dict:
    """A finished run's result.json as the run writes it (its identity from this dataset)."""
    from contracts.result import write_result
    from contracts.dataset import fingerprint as dataset_fingerprint
    from contracts.identity import identity
    from benchmark.training.config import compose, run_config

    cfg = compose([f"dataset_dir={dataset}", *overrides])
    config = run_config(cfg)
    fp = dataset_fingerprint(dataset, cfg.split.scheme, cfg.split.fold)
    claim(run_dir, "run", "RUN_DIR")
    write_result(run_dir, {"status": "ok", "error": None, "config": config,
                           "identity": identity(config, fp)})
    return cfg


def test_a_run_on_a_rebuilt_dataset_is_stale(tiny_raw, tmp_path, capsys):
    from benchmark.sweeping.runner import read_status
    from benchmark.training.run import run
    from contracts.dataset import fingerprint

    data = convert(tiny_raw, tmp_path / "data", CFG)
    run_dir = tmp_path / "run"
    cfg = _finished_run(run_dir, data, [])
    assert run(cfg, run_dir) == 0  # same run, same data: not redone
    assert "not redone" in capsys.readouterr().out
    from benchmark.training.config import run_config
    config = run_config(cfg)
    split = config["split"]
    assert read_status(run_dir, config, fingerprint(data, split["scheme"], split["fold"])) == ("ok", None)

    convert(tiny_raw, data, {**CFG, "slices": {"keep": "all"}})  # rebuilt in place, more images
    before = snapshot(run_dir)
    assert run(cfg, run_dir) == 2
    assert "dataset (rebuilt or another one)" in capsys.readouterr().err
    assert snapshot(run_dir) == before
    status, error = read_status(run_dir, config, fingerprint(data, split["scheme"], split["fold"]))
    assert status == "failed" and "StaleResult" in error and "dataset" in error


def test_moving_a_dataset_keeps_its_runs(tiny_raw, tmp_path):
    from benchmark.training.run import run

    data = convert(tiny_raw, tmp_path / "data", CFG)
    run_dir = tmp_path / "run"
    _finished_run(run_dir, data, [])
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved)
    from benchmark.training.config import compose
    assert run(compose([f"dataset_dir={moved}"]), run_dir) == 0


@pytest.mark.slow
def test_a_checkpoint_is_never_resumed_by_another_run(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"

    def train(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "benchmark.train", "solver=smoke", "solver.max_iter=2",
                               "measure.flops=false", "keep_checkpoint=true", f"dataset_dir={tiny_dataset}",
                               f"hydra.run.dir={run_dir}", *extra], cwd=REPO, capture_output=True, text=True)

    first = train("split.fold=0")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = run_dir / "d2" / "model_final.pth"
    weights = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    (run_dir / "result.json").unlink()  # only the result is gone: the checkpoint is fold 0's
    second = train("split.fold=1", "seed=1")
    assert second.returncode == 1
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "failed" and res["error"]["type"] == "CheckpointMismatch"
    assert "another run" in res["error"]["message"] and res["metrics"] is None
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == weights


# ----------------------------------------------------------------------------- every combination
def stray_folders(root: Path) -> dict[str, Path]:
    """One user's folder per public variable, each laid out like what lungbench would find
    or write there, plus a WORK whose usual sub-folders are the user's own."""
    f = {
        "DATA_ROOT": precious(root / "raw", "COVID-19-CT-Seg_20cases/readme.txt"),
        "DATA_OUT": precious(root / "out", "annotations/all.json", "images/a/0000.png"),
        "RUN_DIR": precious(root / "run", "result.json", ".hydra/config.yaml", "d2/model_final.pth"),
        "SWEEP_DIR": precious(root / "sweep", "sweep.json", "R50-FPN/result.json", "report/plot.png"),
        "SWEEP": precious(root / "report_me", "report/report.html", "report/mine.png", "runs.csv"),
        "RUN": precious(root / "my_run", "result.json", "d2/config.yaml", "d2/model_final.pth"),
        "INPUT": precious(root / "my_ct", "scan_001.nii.gz", "notes.txt"),
        "OUT": precious(root / "my_pred", "scan_001.nii.gz", "volumes.csv"),
        "WORK": precious(root / "work", "data/phantom/precious.txt", "data/covid19_ct_seg/x.txt",
                         "raw/phantom/precious.txt", "raw/covid19_ct_seg/x.txt",
                         "data/raw/phantom/precious.txt",
                         "runs/r50_fpn-smoke/result.json", "sweeps/smoke/sweep.json",
                         "sweeps/demo/sweep.json", "sweeps/grid9/x.txt"),
    }
    return f


def _combos(names: list[str]) -> list[dict[str, bool]]:
    out = [{}]
    for n in names:
        out = [c | {n: v} for c in out for v in (False, True)]
    return out


# target -> the public variables it reads (DATA is varied separately for data)
TARGETS = {
    "data": ["DATA_ROOT", "DATA_OUT", "WORK"],
    "train": ["RUN_DIR", "DATA_OUT", "WORK"],
    "sweep": ["SWEEP_DIR", "DATA_OUT", "WORK"],
    "report": ["SWEEP", "WORK"],
    "clean": ["WORK"],
    "download": ["DATA_ROOT", "WORK"],
    "demo": ["WORK"],
    "predict": ["RUN", "INPUT", "OUT"],
}
# Every stray folder lies below a folder whose name a shell would run as commands: each value
# typed also tests that no make variable reaches a shell as code (nothing creates PWNED).
HOSTILE_ROOT = "user `touch PWNED` $(touch PWNED); touch PWNED || 'q' \"x\""
ARGS = {"data": "workers=1", "train": "solver.max_iter=1 measure.flops=false",
        "sweep": "backbone=r50_fpn solver.max_iter=1 measure.flops=false",
        "download": "--base-url http://127.0.0.1:9 --retries 0"}


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_make_target_and_variable_leaves_stray_files_alone(target, sandbox, tmp_path):
    stray = stray_folders(tmp_path / HOSTILE_ROOT)
    before = snapshot(*stray.values())
    names = TARGETS[target]
    datas = [None, "phantom", "covid19_ct_seg"] if target == "data" else [None]
    runs = []
    for data in datas:
        for combo in _combos(names):
            if target == "demo" and not combo["WORK"]:
                continue  # the real demo (make demo itself is timed and checked elsewhere)
            chosen = {n: str(stray[n]) for n, on in combo.items() if on}
            if data:
                chosen["DATA"] = data
            extra = {"EXPERIMENT": "smoke"} if target == "sweep" else {}
            args = [f"{k}={v}" for k, v in (chosen | extra).items()]
            if target in ARGS:
                args.append(f"ARGS={ARGS[target]}")
            runs.append((args, None))
            if target != "demo":  # exported, they are ignored: the demo would run for real
                runs.append(([a for a in args if a.startswith(("ARGS=", "EXPERIMENT="))], chosen))
    problems = []
    for args, env in runs:
        p = make(sandbox, target, *args, env=env)
        after = snapshot(*stray.values())
        changed = [k for k, v in before.items() if after.get(k) != v]
        new = [k for k in after if k not in before
               and not (target == "download" and "/.archives" in k)]  # download's own folder
        if changed or new:
            problems.append(f"make {target} {' '.join(args)} env={env}: changed {changed[:3]} new {new[:3]}"
                            f"\n{p.stdout[-800:]}{p.stderr[-800:]}")
        if target == "clean":
            assert p.returncode == 0, p.stderr
    assert not problems, "\n".join(problems)
    # a refused command says which folder and why
    p = make(sandbox, target, *[f"{n}={stray[n]}" for n in names],
             *([f"ARGS={ARGS[target]}"] if target in ARGS else []))
    if target not in ("clean", "download"):
        assert p.returncode != 0 and str(tmp_path / HOSTILE_ROOT) in p.stderr, p.stderr[-2000:]
    assert not [p for p in (sandbox, tmp_path, REPO, tmp_path / HOSTILE_ROOT) if (p / "PWNED").exists()]


@pytest.mark.slow
def test_every_entry_point_leaves_stray_files_alone(tmp_path, tiny_dataset):
    stray = stray_folders(tmp_path / "user")
    before = snapshot(*stray.values())
    py = [sys.executable, "-m"]
    ct = tmp_path / "ct" / "c.nii.gz"
    ct.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), str(ct))
    cmds = [
        py + ["converters.convert", "data=covid19_ct_seg", f"data.root={stray['DATA_ROOT']}", "out=" + str(tmp_path / "o")],
        py + ["converters.convert", "data=covid19_ct_seg", f"data.root={tiny_dataset.parent}", f"out={stray['DATA_OUT']}"],
        py + ["converters.convert", "data=phantom", f"out={stray['WORK'] / 'data' / 'phantom'}"],
        py + ["converters.convert", "data=phantom", f"data.root={stray['DATA_ROOT']}", "out=" + str(tmp_path / "o")],
        py + ["benchmark.train", f"dataset_dir={tiny_dataset}", f"hydra.run.dir={stray['RUN_DIR']}"],
        py + ["benchmark.train", f"dataset_dir={stray['DATA_OUT']}", f"hydra.run.dir={stray['WORK'] / 'runs' / 'r50_fpn-smoke'}"],
        py + ["benchmark.train", "-m", f"dataset_dir={tiny_dataset}", f"hydra.sweep.dir={stray['SWEEP_DIR']}"],
        py + ["benchmark.sweep", "+experiment=smoke", f"dataset_dir={tiny_dataset}", f"hydra.sweep.dir={stray['SWEEP_DIR']}"],
        py + ["reports.build", str(stray["SWEEP"])],
        py + ["reports.build", "--latest", str(stray["WORK"] / "sweeps")],
        py + ["converters.clean", str(stray["WORK"])],
        py + ["benchmark.predict", "--run", str(stray["RUN"]), "--input", str(stray["INPUT"]), "--out", str(stray["OUT"])],
        py + ["benchmark.predict", "--run", str(stray["RUN"]), "--input", str(stray["INPUT"]), "--out", str(tmp_path / "o")],
        py + ["benchmark.predict", "--run", str(stray["RUN"]), "--input", str(ct), "--out", str(stray["OUT"])],
    ]
    for cmd in cmds:
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert snapshot(*stray.values()) == before, f"{' '.join(cmd[2:])}\n{p.stderr[-1500:]}"
        if cmd[2] != "converters.clean":
            assert p.returncode != 0, f"{' '.join(cmd[2:])} was not refused"
