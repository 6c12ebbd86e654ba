"""The synthetic phantom: layout, labels, anatomy, orientation, determinism."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from converters import phantom

IMG = phantom.IMAGE_DIR
MASK = phantom.COMBINED_DIR


def _load(path):
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def test_tiny_layout_and_shapes(tiny_raw):
    spec = phantom.PRESETS["tiny"]
    ids = [f"phantom_{i:03d}" for i in range(spec.n_cases)]
    assert sorted(p.name for p in (tiny_raw / IMG).iterdir()) == [f"{i}.nii.gz" for i in ids]
    assert sorted(p.name for p in (tiny_raw / MASK).iterdir()) == [f"{i}.nii.gz" for i in ids]
    img = nib.load(str(tiny_raw / IMG / "phantom_000.nii.gz"))
    assert img.shape == (spec.size, spec.size, spec.slices)
    assert "".join(nib.aff2axcodes(img.affine)) == "LPS"  # like ITK-written clinical NIfTI
    zooms = img.header.get_zooms()
    assert zooms[0] == pytest.approx(spec.fov_mm / spec.size, rel=1e-5)
    assert zooms[2] == pytest.approx(spec.z_extent_mm / spec.slices, rel=1e-5)
    assert img.get_data_dtype() == np.int16


def test_default_preset_is_demo_sized():
    spec = phantom.spec_for("default")
    # make demo trains nine backbones on a 2-core CPU (small images) and splits 2-fold by
    # patient: 10 test cases in fold 0, so a consistent difference can be significant
    assert spec.n_cases >= 20 and spec.size <= 128 and spec.slices <= 32


def test_labels_and_patient_left(tiny_raw):
    for i in range(phantom.PRESETS["tiny"].n_cases):
        lab, aff = _load(tiny_raw / MASK / f"phantom_{i:03d}.nii.gz")
        assert set(np.unique(lab).tolist()) == {0, 1, 2, 3}
        # world RAS+: x grows towards the patient's right, so the LEFT lung (label 1)
        # has the smaller x
        left, right = _world_centroid(lab == 1, aff), _world_centroid(lab == 2, aff)
        assert left[0] < 0 < right[0]


def test_intensities_and_anatomy(tiny_raw):
    hu, aff = _load(tiny_raw / IMG / "phantom_000.nii.gz")
    lab, _ = _load(tiny_raw / MASK / "phantom_000.nii.gz")
    hu = hu.astype(float)
    lung = (lab == 1) | (lab == 2)
    assert -900 < np.median(hu[lung]) < -780  # aerated lung (vessels raise the mean)
    assert -600 < np.median(hu[lab == 3]) < -400  # ground glass
    assert hu[lung].std() > 20  # texture and vessels, not a flat fill
    # outside the body: air; the body has soft tissue and bone
    assert np.median(hu[0, 0, :]) < -950
    assert (hu > 300).sum() > 0 and ((hu > 0) & (hu < 100)).sum() > 0


def test_infection_favours_lower_posterior_peripheral(tmp_path):
    root = phantom.generate(tmp_path, preset="tiny", seed=3, n_cases=6, size=48, slices=20,
                            blobs=(3, 5))
    dz, dy = [], []
    for i in range(6):
        lab, aff = _load(root / MASK / f"phantom_{i:03d}.nii.gz")
        lung = lab > 0
        c_inf, c_lung = _world_centroid(lab == 3, aff), _world_centroid(lung, aff)
        dz.append(c_inf[2] - c_lung[2])  # superior +
        dy.append(c_inf[1] - c_lung[1])  # anterior +
    assert np.mean(dz) < 0 and np.mean(dy) < 0


def test_deterministic_and_seeded(tmp_path):
    a = phantom.generate(tmp_path / "a", preset="tiny", seed=7, n_cases=1)
    b = phantom.generate(tmp_path / "b", preset="tiny", seed=7, n_cases=1)
    c = phantom.generate(tmp_path / "c", preset="tiny", seed=8, n_cases=1)
    f = f"{IMG}/phantom_000.nii.gz"
    assert (a / f).read_bytes() == (b / f).read_bytes()
    assert (a / f).read_bytes() != (c / f).read_bytes()


def test_same_parameters_do_no_work_changed_ones_rebuild(tmp_path):
    root = phantom.generate(tmp_path / "r", preset="tiny", n_cases=1)
    f = root / IMG / "phantom_000.nii.gz"
    before = f.stat().st_mtime_ns
    phantom.generate(root, preset="tiny", n_cases=1)
    assert f.stat().st_mtime_ns == before
    phantom.generate(root, preset="tiny", n_cases=2)
    assert json.loads((root / "phantom.json").read_text())["spec"]["n_cases"] == 2
    assert (root / IMG / "phantom_001.nii.gz").exists()
    assert not list(tmp_path.glob("r.tmp-*")) and not list(tmp_path.glob("r.old-*"))


@pytest.mark.parametrize("axcodes", ["RAS", "PIR"])
def test_storage_orientation_keeps_world_geometry(tmp_path, axcodes):
    ref = phantom.generate(tmp_path / "lps", preset="tiny", n_cases=1)
    other = phantom.generate(tmp_path / axcodes, preset="tiny", n_cases=1, axcodes=axcodes)
    a = nib.as_closest_canonical(nib.load(str(ref / MASK / "phantom_000.nii.gz")))
    b = nib.load(str(other / MASK / "phantom_000.nii.gz"))
    assert "".join(nib.aff2axcodes(b.affine)) == axcodes
    b = nib.as_closest_canonical(b)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))


def test_separate_masks_match_combined(tmp_path):
    root = phantom.generate(tmp_path, preset="tiny", n_cases=1, mask_layout="both")
    comb, _ = _load(root / MASK / "phantom_000.nii.gz")
    lung, _ = _load(root / phantom.LUNG_DIR / "phantom_000.nii.gz")
    inf, _ = _load(root / phantom.INFECTION_DIR / "phantom_000.nii.gz")
    assert set(np.unique(lung).tolist()) == {0, 1, 2} and set(np.unique(inf).tolist()) == {0, 1}
    np.testing.assert_array_equal(np.where(inf == 1, 3, lung), comb)
    # infected voxels belong to a lung in Lung_Mask
    assert (lung[inf == 1] > 0).all()


def test_prewindowed_cases(tmp_path):
    root = phantom.generate(tmp_path, preset="tiny", n_cases=2, n_windowed=1)
    hu, _ = _load(root / IMG / "phantom_000.nii.gz")
    win, _ = _load(root / IMG / "phantom_001.nii.gz")
    assert hu.min() < -900
    assert win.min() >= 0 and win.max() <= 255 and win.max() > 200


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        phantom.generate(tmp_path, preset="huge")
    with pytest.raises(ValueError, match="n_case"):
        phantom.generate(tmp_path, n_case=3)
