"""Nothing a user types or a file name holds runs as a command, and nothing lungbench reads
changes under it. One test (or group) per way it went wrong: values pasted into shell code,
make clean deleting a user's file inside a marked folder, Hydra writing outside the run
folder or before the lock, readers without a lock, stale runs shown as ok, locks kept alive
by orphaned workers, phantoms sharing raw volumes, tracebacks instead of messages.
"""
from __future__ import annotations

import errno
import gzip
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from contracts import fsutil
from converters import launch
from converters.clean import CleanRefused, clean
from converters.convert import convert
from converters.errors import ConversionError
from contracts.fsutil import OutputBusy, atomic_dir, claim, output_lock, write_text
from tests.test_user_data import REPO, make, precious, sandbox, snapshot  # noqa: F401 (fixture)

CFG = {"workers": 1}
# Values a hostile file name or a careless paste can hold; each must reach a program as text
HOSTILE = ["x`touch {p}`", "x$(touch {p})", "x; touch {p}", "x || touch {p}", "it's \"q\" {p}",
           "with space {p}", "-leading {p}", "x$(shell touch {p})", "a,b {p}", "x${{oc.env:HOME}} {p}"]


def _hostile(tmp: Path) -> tuple[list[str], Path]:
    pwned = tmp / "PWNED"
    return [v.format(p=pwned) for v in HOSTILE], pwned


# ----------------------------------------------------------------------------- 1: shell injection
def _argv_of(box: Path, target: str, *args: str) -> list[str]:
    p = make(box, "-n", target, *args)
    assert p.returncode == 0, p.stderr
    return shlex.split(p.stdout.strip().splitlines()[-1])


def _hydra_value(argv: list[str], key: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    [arg] = [a for a in argv if a.startswith(f"{key}=")]
    o = OverridesParser.create().parse_override(arg)
    assert not o.is_sweep_override(), f"{arg} would sweep"
    return OmegaConf.create({"v": o.value()}).v  # as the program reads it (interpolation too)


def test_every_variable_reaches_its_program_as_one_argument(sandbox, tmp_path):
    values, pwned = _hostile(tmp_path)
    for value in values:
        train = _argv_of(sandbox, "train", f"RUN_DIR={value}", f"DATA_OUT={value}")
        assert _hydra_value(train, "hydra.run.dir") == value
        assert _hydra_value(train, "dataset_dir") == value
        sweep = _argv_of(sandbox, "sweep", f"SWEEP_DIR={value}", f"DATA_OUT={value}")
        assert _hydra_value(sweep, "hydra.sweep.dir") == value
        data = _argv_of(sandbox, "data", f"DATA_ROOT={value}", f"DATA_OUT={value}")
        assert _hydra_value(data, "data.root") == value and _hydra_value(data, "out") == value
        predict = _argv_of(sandbox, "predict", f"RUN={value}", f"INPUT={value}", f"OUT={value}")
        for opt in ("--run", "--input", "--out"):
            assert f"{opt}={value}" in predict
        assert _argv_of(sandbox, "report", f"SWEEP={value}")[-2:] == ["--", value]
        assert _argv_of(sandbox, "download", f"DATA_ROOT={value}")[-1] == f"--dest={value}"
        assert _argv_of(sandbox, "clean", f"WORK={value}")[-2:] == ["--", value]
    assert not pwned.exists() and not (sandbox / "PWNED").exists()


def test_args_are_split_like_a_shell_but_never_evaluated(sandbox, tmp_path):
    pwned = tmp_path / "PWNED"
    argv = _argv_of(sandbox, "train", f"ARGS=seed=1 'dataset_name=my data' x=$(touch {pwned}) y=`touch {pwned}`")
    assert argv[-6:] == ["seed=1", "dataset_name=my data", "x=$(touch", f"{pwned})", "y=`touch", f"{pwned}`"]
    p = make(sandbox, "-n", "train", "ARGS=seed='1")
    assert p.returncode == 2 and "ARGS=" in p.stderr and "quot" in p.stderr
    assert not pwned.exists()


def test_a_comma_in_a_path_is_one_dataset_not_a_sweep(sandbox):
    argv = _argv_of(sandbox, "sweep", "DATA_OUT=work/data/a,b")
    assert _hydra_value(argv, "dataset_dir") == "work/data/a,b"


def test_no_variable_is_silently_ignored(sandbox):
    assert "solver=paper" in _argv_of(sandbox, "sweep", "SOLVER=paper")
    assert not any(a.startswith("solver=") for a in _argv_of(sandbox, "sweep"))  # the experiment's
    for target, var in [("sweep", "BACKBONE=r50_c4"), ("predict", "SOLVER=paper"),
                        ("demo", "DATA_OUT=x"), ("clean", "ARGS=-v"), ("report", "RUN_DIR=x")]:
        p = make(sandbox, "-n", target, var)
        assert p.returncode == 2 and var.split("=")[0] in p.stderr, (target, var, p.stderr)
    p = make(sandbox, "-n", "reproduce")
    assert p.returncode == 0, p.stderr
    for step in ("converters.download", "converters.convert", "+experiment=table3",
                 "split=ma2021_5fold", "split.fold=0,1,2,3,4", "reports.build", "not yet measured"):
        assert step in p.stdout, step


@pytest.mark.slow
def test_hostile_values_run_for_real_and_paths_with_spaces_work(sandbox, tmp_path):
    """The programs themselves, not only their argument lists: a train on a path full of shell
    syntax, a conversion into one, a predict of a file named like a command, a clean of a
    WORK holding a quote. No command runs; what is not a usable path fails with a message."""
    values, pwned = _hostile(tmp_path)
    weird = tmp_path / "my data `touch {p}` $(touch {p}) 'q'".format(p=pwned)
    p = make(sandbox, "data", f"DATA_OUT={weird}", "ARGS=workers=1 data.generate.preset=tiny")
    assert p.returncode == 0, p.stderr
    assert (weird / "dataset.json").is_file()
    run = tmp_path / "runs" / "x`touch PWNED`; touch PWNED || $(touch PWNED)"
    p = make(sandbox, "train", f"DATA_OUT={weird}", f"RUN_DIR={run}",
             "ARGS=solver.max_iter=1 measure.flops=false infer_batch_size=1")
    assert (run / "result.json").is_file(), p.stderr[-2000:]
    ct = tmp_path / "ct"
    ct.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 4), np.int16), np.eye(4)), str(ct / "ct`touch PWNED`.nii.gz"))
    for f in ct.iterdir():
        p = make(sandbox, "predict", f"RUN={run}", f"INPUT={f}", f"OUT={tmp_path / 'pred'}")
        assert p.returncode == 2 and "keep_checkpoint" in p.stderr, p.stderr  # refused: no checkpoint
    p = make(sandbox, "clean", f"WORK={tmp_path}/w'; touch {pwned}; echo '")
    assert p.returncode == 0, p.stderr
    assert not pwned.exists() and not (sandbox / "PWNED").exists() and not (REPO / "PWNED").exists()


# ----------------------------------------------------------------------------- 2: make clean
def _predict_out(root: Path) -> Path:
    with atomic_dir(root / "pred", "predictions", "OUT") as tmp:
        write_text(tmp / "volumes.csv", "case\n")
    return root / "pred"


def test_clean_refuses_marked_folders_holding_a_users_files_and_deletes_nothing(tmp_path):
    work = tmp_path / "work"
    pred = _predict_out(work)
    (pred / "mynote.txt").write_text("mine\n")
    sweep = claim(work / "sweeps" / "s", "sweep", "SWEEP_DIR")
    write_text(sweep / "sweep.json", "{}\n")
    (sweep / "analysis.ipynb").write_text("{}\n")
    run = claim(sweep / "R50-FPN", "run", "RUN_DIR")
    write_text(run / "result.json", "{}\n")
    other = _predict_out(work / "other")  # clean on its own, yet kept: nothing goes if one is refused
    before = snapshot(work)
    with pytest.raises(CleanRefused) as e:
        clean(work)
    assert "mynote.txt" in str(e.value) and "analysis.ipynb" in str(e.value)
    assert snapshot(work) == before and other.exists()
    p = subprocess.run([sys.executable, "-m", "converters.clean", str(work)], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 1 and "mynote.txt" in p.stderr and "nothing deleted" in p.stderr
    assert snapshot(work) == before
    (pred / "mynote.txt").unlink()
    (sweep / "analysis.ipynb").unlink()
    deleted, _ = clean(work)
    assert not pred.exists() and not sweep.exists() and not other.exists() and len(deleted) == 3


def test_clean_leaves_folders_in_use_alone(tmp_path):
    work = tmp_path / "work"
    sweep = claim(work / "sweeps" / "s", "sweep", "SWEEP_DIR")
    run = claim(sweep / "R50-FPN", "run", "RUN_DIR")
    data = _predict_out(work / "data")
    before = snapshot(work)
    with output_lock(run, "RUN_DIR"):  # a training in that run folder
        with pytest.raises(CleanRefused, match="in use"):
            clean(work)
    assert snapshot(work) == before
    with output_lock(data, "dataset", shared=True):  # a training reading that dataset
        with pytest.raises(CleanRefused, match="in use"):
            clean(work)
    assert snapshot(work) == before
    clean(work)
    assert not sweep.exists() and not data.exists()


# ----------------------------------------------------------------------------- 3, 4: Hydra's files
def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark.train", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_hydra_is_refused_writing_outside_the_run_folder(tmp_path, tiny_dataset):
    mine = precious(tmp_path / "mine", "config.yaml", "log.txt")
    before = snapshot(mine)
    for override in (f"hydra.output_subdir={mine}",
                     f"hydra.job_logging.handlers.file.filename={mine / 'log.txt'}",
                     "hydra.job_logging.handlers.file.filename=${hydra.runtime.output_dir}/../../x.log"):
        p = _train(f"dataset_dir={tiny_dataset}", f"hydra.run.dir={tmp_path / 'run'}", override)
        assert p.returncode == 2 and "refused" in p.stderr and override.split("=")[0] in p.stderr, p.stderr
    assert snapshot(mine) == before
    assert not (tmp_path / "run").exists()


def test_a_refused_or_concurrent_rerun_leaves_the_runs_record_as_it_was(tmp_path, tiny_dataset):
    from tests.test_user_data import _finished_run

    run_dir = tmp_path / "run"
    _finished_run(run_dir, tiny_dataset, [])
    write_text(run_dir / ".hydra" / "config.yaml", "seed: 0\nkeep_checkpoint: true\n")  # the run's own
    before = snapshot(run_dir)
    p = _train(f"dataset_dir={tiny_dataset}", f"hydra.run.dir={run_dir}", "seed=5")  # another run
    assert p.returncode == 2 and "not this one" in p.stderr, p.stderr
    assert snapshot(run_dir) == before
    with output_lock(run_dir, "RUN_DIR"):  # a concurrent run holds the folder
        p = _train(f"dataset_dir={tiny_dataset}", f"hydra.run.dir={run_dir}", "seed=5")
        assert p.returncode == 2 and "being written" in p.stderr, p.stderr
    assert snapshot(run_dir) == before


# ----------------------------------------------------------------------------- 5: readers locked
def test_a_training_holds_its_dataset_so_a_rebuild_is_refused(tmp_path, tiny_raw, monkeypatch):
    from benchmark.training import run as run_mod
    from benchmark.training.config import compose

    data = convert(tiny_raw, tmp_path / "data", CFG)
    seen = {}

    def reading(cfg, run_dir, config):  # stands in for the training: it tries the rebuild
        try:
            convert(tiny_raw, data, {**CFG, "window": [-1000, 0]})
        except OutputBusy as e:
            seen["refused"] = str(e)
        return 0

    monkeypatch.setattr(run_mod, "run_reading", reading)
    cfg = compose([f"dataset_dir={data}"])
    assert run_mod.run(cfg, tmp_path / "run") == 0
    assert "being read" in seen["refused"] and str(data) in seen["refused"]
    convert(tiny_raw, data, {**CFG, "window": [-1000, 0]})  # after the run: allowed


def test_readers_share_a_lock_and_a_writer_waits_for_none_of_them(tmp_path):
    out = claim(tmp_path / "ds", "sweep", "SWEEP_DIR")
    with output_lock(out, "x", shared=True), output_lock(out, "x", shared=True):
        with pytest.raises(OutputBusy, match="being read"):
            with output_lock(out, "x"):
                pass
    with output_lock(out, "x"):
        with pytest.raises(OutputBusy, match="being written"):
            with output_lock(out, "x", shared=True):
                pass
    with output_lock(out, "x"):  # every lock was released
        pass
    assert not fsutil.lock_path(out).exists()


# ----------------------------------------------------------------------------- 6: stale runs
def test_new_ct_pixels_under_the_same_masks_are_another_dataset(tmp_path):
    from contracts.dataset import fingerprint as dataset_fingerprint
    from converters import phantom

    raw = phantom.generate(tmp_path / "raw", preset="tiny", seed=0)
    copy = tmp_path / "raw2"
    import shutil
    shutil.copytree(raw, copy)
    data = convert(copy, tmp_path / "data", CFG)
    fp = dataset_fingerprint(data, "patient_kfold", 0)
    img = sorted((copy / phantom.IMAGE_DIR).glob("*.nii.gz"))[0]
    v = nib.load(str(img))
    nib.save(nib.Nifti1Image(np.asanyarray(v.dataobj) + 400, v.affine, v.header), str(img))
    data = convert(copy, data, CFG)
    fp2 = dataset_fingerprint(data, "patient_kfold", 0)
    assert fp["config_hash"] == fp2["config_hash"] and fp["sources_sha256"] != fp2["sources_sha256"]


@pytest.mark.slow
def test_the_report_shows_a_run_whose_dataset_changed_as_stale(tmp_path, tiny_raw):
    from reports.collect import CHANGED_DATA_REASON, read_sweep

    data = convert(tiny_raw, tmp_path / "data", CFG)
    sweep = tmp_path / "sweep"
    p = subprocess.run([sys.executable, "-m", "benchmark.sweep", "+experiment=smoke", "backbone=r50_fpn",
                        f"dataset_dir={data}", f"hydra.sweep.dir={sweep}", "solver.max_iter=1",
                        "measure.flops=false"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (read_sweep(sweep).df["status"] == "ok").all()
    convert(tiny_raw, data, {**CFG, "slices": {"keep": "all"}})  # rebuilt in place
    df = read_sweep(sweep).df
    assert (df["status"] == "failed").all() and (df["error_reason"] == CHANGED_DATA_REASON).all()


def test_a_running_run_shows_as_running_not_killed(tmp_path):
    from reports.collect import RUNNING_REASON, read_sweep
    from tests import synthetic

    sweep = tmp_path / "sweep"
    synthetic.write_sweep(sweep, backbones=["R50-FPN", "R50-C4"])
    res = sorted(sweep.rglob("result.json"))[0]
    doc = json.loads(res.read_text())
    doc.update(status="failed", metrics=None,
               error={"type": "Unfinished", "where": "started", "message": "killed (SIGKILL)", "traceback": None})
    res.write_text(json.dumps(doc))
    with output_lock(res.parent, "RUN_DIR"):  # the run's own process still holds it
        df = read_sweep(sweep).df
        row = df[df["error_reason"] == RUNNING_REASON]
        assert len(row) == 1 and row["status"].iloc[0] == "running"
    df = read_sweep(sweep).df  # the process is gone: killed, as recorded
    assert not (df["error_reason"] == RUNNING_REASON).any()


# ----------------------------------------------------------------------------- 7: locks die
_HOLDER = """
import sys, time, multiprocessing as mp
from contracts.fsutil import output_lock
def nap(_):
    time.sleep(60)
if __name__ == "__main__":
    mp.set_start_method("fork")
    with output_lock(sys.argv[1], "DATA_OUT"):
        pool = mp.Pool(2)
        pool.map_async(nap, range(2))
        print("locked", flush=True)
        time.sleep(60)
"""


def test_a_lock_dies_with_its_owner_even_when_pool_workers_live_on(tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)
    p = subprocess.Popen([sys.executable, str(script), str(out)], cwd=REPO, stdout=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusy):
            with output_lock(out, "DATA_OUT"):
                pass
        os.kill(p.pid, signal.SIGKILL)  # the owner dies; its pool workers are orphans now
        p.wait()
        time.sleep(0.5)
        with output_lock(out, "DATA_OUT"):  # proceeds
            pass
    finally:
        os.killpg(p.pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- 8: phantom raw
def test_two_phantoms_in_one_folder_keep_their_own_raw_volumes(tmp_path):
    from converters.config import load_config
    from converters.convert import run

    def build(name: str, seed: int) -> Path:
        cfg = load_config({"out": str(tmp_path / "data" / name), "workers": 1})
        cfg.data.generate = {"preset": "tiny", "seed": seed}
        return run(cfg)

    from contracts.dataset import read_dataset

    a = build("a", 0)
    raw_a = Path(read_dataset(a).manifest["raw_root"])
    before = snapshot(raw_a)
    b = build("b", 1)
    raw_b = Path(read_dataset(b).manifest["raw_root"])
    assert raw_a != raw_b and snapshot(raw_a) == before


# ----------------------------------------------------------------------------- 9: clear errors
def _nifti(path: Path, data: np.ndarray, dtype=None) -> Path:
    img = nib.Nifti1Image(data, np.eye(4))
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


def _claims_huge(path: Path) -> Path:
    """A small gzip whose header claims 2048 x 2048 x 640 int16 voxels (5 GiB)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2048, 2048, 640))
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(np.eye(4), 1)
    with gzip.open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 1_000_000)
    return path


@pytest.mark.parametrize("name,problem", [("thin", "minimum of 8"), ("rgb", "RGB"),
                                          ("complex", "complex"), ("huge", "more than the limit")])
def test_bad_volumes_get_a_message_before_anything_is_read(tmp_path, name, problem):
    from converters.volume import read_volume

    f = tmp_path / f"{name}.nii.gz"
    if name == "thin":
        _nifti(f, np.zeros((3000, 1, 2), np.int16))
    elif name == "rgb":
        rgb = np.zeros((32, 32, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(f))
    elif name == "complex":
        _nifti(f, np.zeros((32, 32, 4), np.complex64))
    else:
        _claims_huge(f)
    with pytest.raises(ConversionError, match=problem) as e:
        read_volume(f)
    assert str(f) in str(e.value)
    if name == "huge":
        # the documented option lets the claim through; then the short data are named
        with pytest.raises(ConversionError, match="truncated|unreadable"):
            read_volume(f, max_voxels=1 << 33)


def test_predict_names_a_bad_input_without_a_traceback(tmp_path):
    (tmp_path / "ct").mkdir()
    bad = _claims_huge(tmp_path / "ct" / "big.nii.gz")
    p = subprocess.run([sys.executable, "-m", "benchmark.predict", "--run", str(tmp_path / "no_run"),
                        "--input", str(bad), "--out", str(tmp_path / "o")], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "more than the limit" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only")])
def test_a_full_or_read_only_disk_is_named_as_such(tmp_path, tiny_raw, code, words):
    out = tmp_path / "out"
    # the converter's JSON writes fail as a full (or read-only) disk makes them fail
    script = (f"import json, os, runpy, sys\n"
              f"def full(obj, f, **k):\n    raise OSError({code}, os.strerror({code}), f.name)\n"
              f"json.dump = full\n"
              f"sys.argv = ['convert', 'data=covid19_ct_seg', 'data.root={tiny_raw}', 'out={out}', 'workers=1']\n"
              f"runpy.run_module('converters.convert', run_name='__main__', alter_sys=True)\n")
    p = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and words in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert str(out) in p.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # no half-written folder


def test_launch_refuses_control_characters_in_paths():
    vals = launch.Values({"RUN_DIR": "a\nb", "DATA_OUT": "d", "BACKBONE": "r50_fpn", "SOLVER": "smoke"},
                         {"RUN_DIR"})
    with pytest.raises(launch.LaunchError, match="control character"):
        launch.command("train", vals, "python")


def _n(box: Path, target: str, *args: str) -> subprocess.CompletedProcess:
    return make(box, "-n", "-o", ".venv/.lungbench-stamp", target, *args)


@pytest.mark.slow  # 16 targets x 15 variables of `make -n`
@pytest.mark.parametrize("target", sorted(launch.USES))
def test_every_target_uses_or_refuses_every_variable(sandbox, target):
    """`make -n` for every target and public variable: the variable changes the command that
    would run, or the target refuses it naming it. None is silently ignored."""
    needed = {"RUN": "/tmp/r", "INPUT": "/tmp/i", "OUT": "/tmp/o"} if target == "predict" else {}
    base = _n(sandbox, target, *[f"{k}={v}" for k, v in needed.items()])
    assert base.returncode == 0, base.stderr
    for var in launch.PUBLIC_VARS:
        value = "/tmp/zz" if var in ("WORK", "DATA_ROOT", "DATA_OUT", "RUN_DIR", "SWEEP_DIR", "SWEEP",
                                     "RUN", "INPUT", "OUT") else "zz" if var != "ARGS" else "zz=1"
        p = _n(sandbox, target, *[f"{k}={v}" for k, v in (needed | {var: value}).items()])
        if p.returncode == 2:
            assert f"does not take {var}" in p.stderr, (target, var, p.stderr)
            assert var not in launch.USES[target], (target, var)
        else:
            assert var in launch.USES[target], (target, var, p.stdout)
            assert p.stdout != base.stdout, f"make {target} {var}={value} changed nothing"
