"""Bad input: one test per problem. Each must give a ConversionError whose message names
the file and the problem, and leave no dataset (no out dir, no dataset.json, no temp dir)."""
from __future__ import annotations

import gzip
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
from contracts.fsutil import NotOwned

REPO = Path(__file__).resolve().parent.parent
IMG, MASK = phantom.IMAGE_DIR, phantom.COMBINED_DIR
CFG = {"workers": 1, "splits": {"patient_kfold": {"k": 2}}}


@pytest.fixture(scope="module")
def good_raw(tmp_path_factory) -> Path:
    return phantom.generate(tmp_path_factory.mktemp("good") / "raw", preset="tiny", n_cases=4)


@pytest.fixture
def raw(good_raw, tmp_path) -> Path:
    """A fresh, writable copy of a good 4-case raw folder, to break."""
    return Path(shutil.copytree(good_raw, tmp_path / "raw"))


def _rewrite(path: Path, fn) -> None:
    """Replace the volume at ``path`` with ``fn(data, affine) -> (data, affine)``."""
    img = nib.load(str(path))
    data, aff = fn(np.asanyarray(img.dataobj), img.affine.copy())
    nib.save(nib.Nifti1Image(data, aff), str(path))


def expect_failure(raw: Path, tmp_path: Path, file: Path, *words: str, cfg=CFG) -> str:
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as ei:
        convert(raw, out, cfg)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(file) in msg, msg
    for w in words:
        assert w in msg, msg
    assert not out.exists() and not list(tmp_path.rglob("dataset.json"))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    return msg


def test_truncated_nii_gz(raw, tmp_path):
    f = raw / IMG / "phantom_001.nii.gz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    expect_failure(raw, tmp_path, f, "truncated")


def test_image_mask_shape_mismatch(raw, tmp_path):
    f = raw / MASK / "phantom_001.nii.gz"
    _rewrite(f, lambda d, a: (np.ascontiguousarray(d[:, :-3]), a))
    expect_failure(raw, tmp_path, f, "shape (64, 61, 14) does not match", "(64, 64, 14)")


def test_affine_mismatch(raw, tmp_path):
    f = raw / MASK / "phantom_001.nii.gz"

    def shift(d, a):
        a[0, 3] += 5.0  # 5 mm off
        return d, a
    _rewrite(f, shift)
    expect_failure(raw, tmp_path, f, "affine differs", "not aligned")


def test_4d_volume(raw, tmp_path):
    f = raw / IMG / "phantom_001.nii.gz"
    _rewrite(f, lambda d, a: (np.stack([d, d], axis=-1), a))
    expect_failure(raw, tmp_path, f, "4-D", "expected a 3-D volume")


def test_nan_voxels(raw, tmp_path):
    f = raw / IMG / "phantom_001.nii.gz"

    def nan(d, a):
        d = d.astype(np.float32)
        d[10, 10, 3] = np.nan
        return d, a
    _rewrite(f, nan)
    expect_failure(raw, tmp_path, f, "1 non-finite voxel", "NaN")


def test_unknown_label_value(raw, tmp_path):
    f = raw / MASK / "phantom_001.nii.gz"

    def five(d, a):
        d = d.copy()
        d[5, 5, 5] = 5
        return d, a
    _rewrite(f, five)
    expect_failure(raw, tmp_path, f, "unknown label value(s) 5")


def test_empty_lung_mask(raw, tmp_path):
    f = raw / MASK / "phantom_001.nii.gz"
    _rewrite(f, lambda d, a: (np.zeros_like(d), a))
    expect_failure(raw, tmp_path, f, "lung mask is empty")


def test_missing_mask_file(raw, tmp_path):
    (raw / MASK / "phantom_001.nii.gz").unlink()
    expect_failure(raw, tmp_path, raw / IMG / "phantom_001.nii.gz", "missing mask file",
                   "phantom_001.nii[.gz]")


def test_duplicate_case_id(raw, tmp_path):
    f = raw / IMG / "phantom_001.nii"  # same case, uncompressed copy next to the .nii.gz
    f.write_bytes(gzip.decompress((raw / IMG / "phantom_001.nii.gz").read_bytes()))
    expect_failure(raw, tmp_path, raw / IMG / "phantom_001.nii.gz", "duplicate case id 'phantom_001'",
                   "also phantom_001.nii in the same folder")


def test_unwritable_output_folder(raw, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is needed")
    with pytest.raises(ConversionError) as ei:
        convert(raw, blocker / "out", CFG)
    assert str(blocker) in str(ei.value) and "cannot create the output folder" in str(ei.value)
    assert blocker.is_file() and not list(tmp_path.rglob("dataset.json"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores folder permissions")
def test_read_only_output_folder(raw, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConversionError) as ei:
            convert(raw, ro / "out", CFG)
        assert str(ro) in str(ei.value) and "not writable" in str(ei.value)
        assert not (ro / "out").exists()
    finally:
        ro.chmod(0o755)


def test_failed_rerun_keeps_the_previous_dataset(raw, tmp_path):
    out = convert(raw, tmp_path / "out", CFG)
    before = (out / "dataset.json").read_bytes()
    f = raw / MASK / "phantom_002.nii.gz"
    _rewrite(f, lambda d, a: (np.where(d == 3, 7, d).astype(np.uint8), a))
    with pytest.raises(ConversionError, match="unknown label"):
        convert(raw, out, {**CFG, "window": [-1000, 200]})
    assert (out / "dataset.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def test_several_bad_cases_are_all_named(raw, tmp_path):
    (raw / MASK / "phantom_000.nii.gz").unlink()
    f = raw / IMG / "phantom_002.nii.gz"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(ConversionError) as ei:
        convert(raw, tmp_path / "out", {"workers": 1})
    # found before any voxel is read: a missing mask (discovery), a broken header (pre-pass)
    msg = str(ei.value)
    assert msg.startswith(str(raw / IMG / "phantom_000.nii.gz")) and "missing mask file" in msg
    assert "+1 more bad case(s): phantom_002" in msg and "on_bad_case=skip" in msg


def test_skip_lists_skipped_cases(raw, tmp_path):
    (raw / MASK / "phantom_000.nii.gz").unlink()
    f = raw / IMG / "phantom_002.nii.gz"
    _rewrite(f, lambda d, a: (np.where(d > 0, np.nan, d.astype(np.float32)), a))
    out = convert(raw, tmp_path / "out", {**CFG, "on_bad_case": "skip"})
    m = json.loads((out / "dataset.json").read_text())
    assert [c["id"] for c in m["cases"]] == ["phantom_001", "phantom_003"]
    skipped = {s["case_id"]: s for s in m["skipped"]}
    assert set(skipped) == {"phantom_000", "phantom_002"}
    assert "missing mask file" in skipped["phantom_000"]["problem"]
    assert skipped["phantom_002"]["file"].endswith("phantom_002.nii.gz")
    assert "NaN" in skipped["phantom_002"]["problem"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["phantom_001", "phantom_003"]
    images = json.loads((out / "annotations" / "all.json").read_text())["images"]
    assert {im["case_id"] for im in images} == {"phantom_001", "phantom_003"}
    folds = m["splits"]["patient_kfold"]["folds"]
    assert sorted(c for f in folds for c in f["test"]) == ["phantom_001", "phantom_003"]


def test_cli_bad_case_message(raw, tmp_path):
    f = raw / MASK / "phantom_001.nii.gz"
    _rewrite(f, lambda d, a: (np.zeros_like(d), a))
    r = subprocess.run(
        [sys.executable, "-m", "converters.convert", "data=covid19_ct_seg", f"data.root={raw}",
         f"out={tmp_path}/out", "workers=1", "splits.patient_kfold.k=2"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=120)
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and str(f) in err[0] and "lung mask is empty" in err[0]
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_foreign_output_folder_is_never_replaced(raw, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(NotOwned, match="not made by lungbench"):
        convert(raw, out, CFG)
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_skip_rerun_is_up_to_date(raw, tmp_path):
    f = raw / MASK / "phantom_001.nii.gz"
    _rewrite(f, lambda d, a: (np.ascontiguousarray(d[:, :-3]), a))
    cfg = {**CFG, "on_bad_case": "skip"}
    out = convert(raw, tmp_path / "out", cfg)
    m = json.loads((out / "dataset.json").read_text())
    assert [s["case_id"] for s in m["skipped"]] == ["phantom_001"]
    t0 = (out / "dataset.json").stat().st_mtime_ns
    convert(raw, tmp_path / "out", cfg)
    assert (out / "dataset.json").stat().st_mtime_ns == t0
