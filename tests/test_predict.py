"""From predictions back to CT volumes: the label writer's round trip (every storage
orientation), the overlap rule, volumes.csv numbers, 3-D Dice/NSD on hand-computed cases, and
``make predict``'s refusals of bad input (no model needed for those)."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmark.evaluation.volume3d import METRIC_KEYS, case_means, dice, nsd, volume_metrics
from benchmark.evaluation.apply import (PredictError, apply_run, label_image, load_trained_run, predict_file,
                                        save_atomic, volume_table)
from benchmark.evaluation.predictor import Predictor, labels_from_instances
from benchmark.evaluation.volume3d import known_slices
from benchmark.predict import main
from converters import phantom
from converters.convert import convert
from converters.errors import ConversionError
from contracts.fsutil import NotOwned
from converters.volume import canonical, from_canonical, is_prewindowed
from tests import synthetic


# ------------------------------------------------------------------ round trip
def _oracle_round_trip(raw: Path, dataset: Path, cid: str) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
    """The converted annotations of one case fed through the prediction writer as an oracle
    model's output (score 1): (label volume in the source grid, source mask, source image)."""
    coco = json.loads((dataset / "annotations" / "all.json").read_text())
    oracle = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
               "segmentation": a["segmentation"]} for a in coco["annotations"]]
    known = known_slices(coco, oracle)[cid]  # slice -> its COCO results
    img = nib.load(str(raw / phantom.IMAGE_DIR / f"{cid}.nii.gz"))
    mask = np.asarray(nib.load(str(raw / phantom.COMBINED_DIR / f"{cid}.nii.gz")).dataobj)
    data = np.asarray(img.dataobj)
    ras, _, _ = canonical(data, img.affine)
    # the converter keeps the lung slices: the others hold no label, so the oracle has nothing there
    known = {k: known.get(k, []) for k in range(ras.shape[2])}
    pred = Predictor(model=None, mapper=None, windows=[(-1250.0, 250.0)], score_thresh=0.5)
    labels = from_canonical(pred.predict_volume(ras, is_prewindowed(data), known=known), img.affine)
    return labels, mask, img


def _same_in_itk(path: Path, labels: np.ndarray, affine: np.ndarray) -> None:
    """ITK (what ITK-SNAP and 3D Slicer read NIfTI with) sees the same voxels at the same
    physical places: ITK's LPS points are nibabel's RAS points with x and y negated."""
    import SimpleITK as sitk

    im = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(im).transpose(2, 1, 0), labels)  # ITK arrays are (z, y, x)
    for idx in ((0, 0, 0), tuple(s - 1 for s in labels.shape), (1, 2, 3)):
        ras = (affine @ np.array([*idx, 1.0]))[:3]
        assert np.allclose(im.TransformIndexToPhysicalPoint(tuple(int(i) for i in idx)), ras * [-1, -1, 1], atol=1e-4)


@pytest.mark.parametrize("axcodes", ["LPS", "RAS", "PIR"])
def test_ground_truth_through_the_writer_gives_the_source_masks(tmp_path, axcodes):
    raw = phantom.generate(tmp_path / "raw", preset="tiny", n_cases=2, axcodes=axcodes)
    ds = convert(raw, tmp_path / "ds", {"workers": 1, "splits": {"patient_kfold": {"k": 2}}})
    for cid in ("phantom_000", "phantom_001"):
        labels, mask, img = _oracle_round_trip(raw, ds, cid)
        assert labels.shape == mask.shape and labels.dtype == np.uint8
        assert np.array_equal(labels, mask), f"{axcodes} {cid}: {np.count_nonzero(labels != mask)} voxels differ"
        out = save_atomic(label_image(labels, img), tmp_path / f"{cid}.nii.gz")
        back = nib.load(str(out))
        assert np.array_equal(np.asarray(back.dataobj), mask)
        assert np.allclose(back.affine, img.affine) and back.get_data_dtype() == np.uint8
        assert nib.aff2axcodes(back.affine) == tuple(axcodes)
        _same_in_itk(out, mask, img.affine)
        spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
        m = volume_metrics(mask, labels, spacing)
        assert all(v == 1.0 for d in m.values() for v in d.values()), m
    assert not list(tmp_path.glob(".*tmp*")), "a temp file was left behind"


class _HalvesModel:
    """A stand-in detector: on every slice the image's right half is class 0 (left lung), its
    left half class 1 (right lung), its top-left corner class 2 (infection), as a model that
    learnt the radiological display would answer."""

    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, inputs):
        import torch
        from detectron2.structures import Instances

        out = []
        for x in inputs:
            h, w = x["height"], x["width"]
            m = torch.zeros((3, h, w), dtype=torch.bool)
            m[0, :, w // 2:] = True
            m[1, :, : w // 2] = True
            m[2, : h // 4, : w // 4] = True
            inst = Instances((h, w), pred_masks=m, pred_classes=torch.tensor([0, 1, 2]),
                             scores=torch.tensor([0.9, 0.8, 0.7]))
            out.append({"instances": inst})
        return out


class _Mapper:
    image_format = "BGR"

    def augmentations(self, aug):
        return None


@pytest.mark.parametrize("axcodes", ["LPS", "RAS", "PIR"])
def test_a_predicted_left_lung_lands_on_the_patients_left(tmp_path, axcodes):
    """The model's path (contiguous classes -> labels, display undone, storage order restored):
    label 1 ends up on the patient's left in world coordinates, whatever the storage order."""
    raw = phantom.generate(tmp_path / "raw", preset="tiny", n_cases=1, axcodes=axcodes)
    path = raw / phantom.IMAGE_DIR / "phantom_000.nii.gz"
    pred = Predictor(model=_HalvesModel(), mapper=_Mapper(), windows=[(-1250.0, 250.0)], score_thresh=0.5,
                     batch_size=3)
    labels, vol = predict_file(pred, path)
    assert labels.shape == np.asarray(nib.load(str(path)).dataobj).shape
    world_x = {}
    for v in (1, 2, 3):
        ijk = np.argwhere(labels == v)
        assert len(ijk), f"label {v} missing"
        world_x[v] = float((vol.affine @ np.c_[ijk, np.ones(len(ijk))].T)[0].mean())
    # RAS+: x grows towards the patient's right, so the left lung has the smaller x
    assert world_x[1] < world_x[2]
    assert world_x[3] > world_x[1]  # infection in the image's top left: the patient's right, anterior


def test_the_label_file_keeps_the_inputs_header(tmp_path):
    """A scaled int16 input on a sheared grid: the labels read back unscaled, on the input's own
    qform and sform (with their codes)."""
    aff = np.array([[0.7, 0.1, 0.0, -100], [0.0, 0.7, 0.0, -120], [0.0, 0.3, 2.5, 40], [0, 0, 0, 1]])
    src = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), aff)
    src.header.set_slope_inter(2.0, -1024.0)
    src.set_qform(aff, code=1)
    src.set_sform(aff, code=2)
    nib.save(src, str(tmp_path / "in.nii.gz"))
    like = nib.load(str(tmp_path / "in.nii.gz"))
    labels = np.random.default_rng(0).integers(0, 4, (6, 5, 4)).astype(np.uint8)
    back = nib.load(str(save_atomic(label_image(labels, like), tmp_path / "out.nii.gz")))
    assert np.array_equal(np.asarray(back.dataobj), labels) and back.get_data_dtype() == np.uint8
    assert np.allclose(back.get_sform(), like.get_sform()) and np.allclose(back.get_qform(), like.get_qform())
    assert int(back.header["sform_code"]) == 2 and int(back.header["qform_code"]) == 1
    t = volume_table(labels, aff)
    assert t["infection_ml"] == pytest.approx(round(int((labels == 3).sum()) * 0.7 * 0.7 * 2.5 / 1000, 3))


def test_a_run_prepared_otherwise_is_refused(tmp_path):
    run = _run_without_model(tmp_path)
    (run / "d2").mkdir()
    (run / "d2" / "model_final.pth").write_bytes(b"weights")
    res = json.loads((run / "result.json").read_text())
    res["conversion"]["orientation"] = {"display": "rot90, as a notebook does"}
    (run / "result.json").write_text(json.dumps(res))
    with pytest.raises(PredictError, match="oriented otherwise"):
        load_trained_run(run)


# ------------------------------------------------------------------ overlap rule
def test_the_stand_in_detector_painted_at_two_thresholds_from_one_pass(tmp_path):
    """predict_volumes: the same detections at the Dice threshold and from every score; infection
    (score 0.7) is below a 0.75 threshold and present without one."""
    raw = phantom.generate(tmp_path / "raw", preset="tiny", n_cases=1)
    vol = nib.load(str(raw / phantom.IMAGE_DIR / "phantom_000.nii.gz"))
    ras, _, _ = canonical(np.asarray(vol.dataobj), vol.affine)
    pred = Predictor(model=_HalvesModel(), mapper=_Mapper(), windows=[(-1250.0, 250.0)], score_thresh=0.75,
                     batch_size=2)
    high, every = pred.predict_volumes(ras, is_prewindowed(ras), (0.75, 0.0))
    assert 3 not in np.unique(high) and 3 in np.unique(every)
    assert np.array_equal(high, pred.predict_volume(ras, is_prewindowed(ras)))
    assert np.array_equal(high[every != 3], every[every != 3])  # only the infection differs


def test_both_lung_definitions_by_hand():
    """A left lung of 6 x 6 x 6 voxels holding a 2 x 2 x 2 infection 2 mm inside it, predicted as lung
    throughout: whole lungs (with their infection) match exactly; as labelled (1 without the
    infection) the prediction has 216 voxels against 208: Dice 2*208 / (208 + 216), and the
    cavity's surface is 2 mm from any predicted surface (beyond the 1 mm tolerance)."""
    gt = np.zeros((8, 8, 8), np.uint8)
    gt[1:7, 1:7, 1:7] = 1
    gt[3:5, 3:5, 3:5] = 3
    pred = np.where(gt > 0, 1, 0).astype(np.uint8)
    m = volume_metrics(gt, pred, (1.0, 1.0, 1.0), pred_all=gt)
    assert set(m) == set(METRIC_KEYS)
    assert m["dice3d"]["left_lung"] == 1.0 and m["dice3d_labelled"]["left_lung"] == pytest.approx(416 / 424)
    assert m["dice3d"]["infection"] == m["dice3d_labelled"]["infection"] == 0.0
    assert m["nsd3d"]["left_lung"] == 1.0 and m["nsd3d_labelled"]["left_lung"] < 1.0
    assert m["nsd3d"]["infection"] == m["nsd3d_labelled"]["infection"] == 0.0
    assert all(v == 1.0 for v in m["dice3d_all"].values())  # the second prediction is the ground truth
    assert set(case_means({"a": m})) == set(METRIC_KEYS)


def test_overlap_rule_infection_over_lung_then_higher_score():
    masks = np.zeros((4, 4, 6), bool)
    masks[0, :, 0:4] = True   # left lung, score 0.6
    masks[1, :, 2:6] = True   # right lung, score 0.9: wins the overlap (columns 2-3)
    masks[2, 1, :] = True     # infection over both lungs
    masks[3, 3, :] = True     # infection below the threshold: ignored
    out = labels_from_instances(masks, np.array([1, 2, 3, 3]), np.array([0.6, 0.9, 0.7, 0.4]), 0.5)
    assert out[0].tolist() == [1, 1, 2, 2, 2, 2]
    assert out[1].tolist() == [3] * 6
    assert out[3].tolist() == [1, 1, 2, 2, 2, 2]
    assert labels_from_instances(masks[:0], np.zeros(0), np.zeros(0), 0.5).sum() == 0


# ------------------------------------------------------------------ volumes.csv
def test_volume_table_by_hand():
    lab = np.zeros((20, 10, 4), np.uint8)
    lab[0:8, :, :] = 2          # right lung: 8*10*4 = 320 voxels
    lab[12:20, :, :] = 1        # left lung: 320 voxels
    lab[10:12, :, :] = 3        # infection between them, nearer the left lung at x = 11
    lab[18:20, 0:5, :] = 3      # infection inside the left lung: 2*5*4 = 40 voxels
    affine = np.diag([2.0, 2.0, 5.0, 1.0])  # 20 mm^3 = 0.02 ml per voxel
    t = volume_table(lab, affine)
    # x = 10: the right lung (x = 7) is 3 voxels away, the left (x = 12) 2: left; x = 11 likewise
    inf_left = 2 * 10 * 4 + 40
    assert t["infection_ml"] == pytest.approx((80 + 40) * 0.02)
    assert t["infection_left_ml"] == pytest.approx(inf_left * 0.02)
    assert t["infection_right_ml"] == 0.0
    assert t["left_lung_ml"] == pytest.approx((280 + inf_left) * 0.02)
    assert t["right_lung_ml"] == pytest.approx(320 * 0.02)
    assert t["burden_left_pct"] == pytest.approx(round(100 * inf_left / (280 + inf_left), 4))
    assert t["burden_right_pct"] == 0.0
    assert t["burden_pct"] == pytest.approx(round(100 * inf_left / (280 + inf_left + 320), 4))
    assert volume_table(np.zeros((3, 3, 3), np.uint8), affine)["burden_pct"] is None


# ------------------------------------------------------------------ NSD and Dice by hand
def _vox(shape, *idx):
    a = np.zeros(shape, bool)
    for i in idx:
        a[i] = True
    return a


@pytest.mark.parametrize("axis, step_mm", [(2, 2.5), (0, 0.7), (1, 1.3)])
def test_nsd_of_two_voxels_one_step_apart(axis, step_mm):
    # a voxel's surface points are its 8 corners, all of equal area by symmetry; one step along
    # ``axis`` the 4 shared corners coincide (distance 0), the other 4 are one step away
    spacing = [1.0, 1.0, 1.0]
    spacing[axis] = step_mm
    b = [3, 3, 3]
    b[axis] += 1
    a, bb = _vox((7, 7, 7), (3, 3, 3)), _vox((7, 7, 7), tuple(b))
    assert nsd(a, bb, spacing, 0.99 * step_mm) == pytest.approx(0.5)
    assert nsd(a, bb, spacing, step_mm) == pytest.approx(1.0)
    assert dice(a, bb) == 0.0


def test_nsd_two_voxels_two_steps_apart_anisotropic():
    spacing = (0.8, 0.8, 3.0)
    a, b = _vox((5, 5, 9), (2, 2, 3)), _vox((5, 5, 9), (2, 2, 5))
    assert nsd(a, b, spacing, 2.9) == 0.0        # nearest corners 1 step = 3 mm apart
    assert nsd(a, b, spacing, 3.0) == pytest.approx(0.5)
    assert nsd(a, b, spacing, 5.9) == pytest.approx(0.5)
    assert nsd(a, b, spacing, 6.0) == pytest.approx(1.0)


@pytest.mark.parametrize("s", [1, 2])
def test_offset_cubes(s):
    n, sz = 6, 2.5
    spacing = (0.7, 0.7, sz)
    a = np.zeros((10, 10, 14), bool)
    a[2:2 + n, 2:2 + n, 2:2 + n] = True
    b = np.roll(a, s, axis=2)
    assert dice(a, b) == pytest.approx((n - s) / n)
    # every surface point is within s steps along z of the other surface, and some are exactly that far
    assert nsd(a, b, spacing, s * sz) == pytest.approx(1.0)
    below = nsd(a, b, spacing, s * sz - 0.01)
    assert below < 1.0
    assert nsd(b, a, spacing, s * sz - 0.01) == pytest.approx(below)  # symmetric
    assert nsd(a, a, spacing, 0.1) == pytest.approx(1.0)


def test_empty_conventions():
    z, one = np.zeros((4, 4, 4), bool), _vox((4, 4, 4), (1, 1, 1))
    assert nsd(z, z, (1, 1, 1), 1.0) == 1.0 and dice(z, z) == 1.0
    assert nsd(z, one, (1, 1, 1), 1.0) == 0.0 and nsd(one, z, (1, 1, 1), 1.0) == 0.0
    edge = _vox((4, 4, 4), (0, 0, 0))  # touching the array's edge still has a closed surface
    assert nsd(edge, edge, (1, 1, 1), 0.5) == pytest.approx(1.0)


# ------------------------------------------------------------------ bad input
def _run_without_model(tmp_path: Path) -> Path:
    return synthetic.write_run(tmp_path / "run", synthetic.make_result(schema=3), artifacts=False).parent


def _nifti(path: Path, shape=(8, 8, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), str(path))
    return path


def _singular_nifti(path: Path) -> Path:
    """A readable .nii whose sform maps every slice to one plane (nibabel refuses to write one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hdr = nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)).header.copy()
    hdr["sform_code"], hdr["qform_code"], hdr["vox_offset"] = 1, 0, 352
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + np.zeros((8, 8, 4), np.int16).tobytes(order="F"))
    return path


def test_run_without_kept_checkpoint_says_how_to_keep_one(tmp_path, capsys):
    run = _run_without_model(tmp_path)
    inp = _nifti(tmp_path / "in" / "case_1.nii.gz")
    with pytest.raises(PredictError, match="keep_checkpoint=true"):
        apply_run(run, inp, tmp_path / "out")
    assert main(["--run", str(run), "--input", str(inp), "--out", str(tmp_path / "out")]) == 2
    assert "keep_checkpoint=true" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_not_a_run_folder(tmp_path):
    inp = _nifti(tmp_path / "in" / "case_1.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictError, match="not a lungbench run folder"):
        apply_run(tmp_path / "empty", inp, tmp_path / "out")


@pytest.mark.parametrize("make, problem", [
    (lambda p: _nifti(p / "c.nii.gz", shape=(8, 8, 4, 3)), "4-D"),
    (lambda p: _singular_nifti(p / "c.nii"), "singular"),
    (lambda p: (p.mkdir(parents=True), (p / "c.nii.gz").write_bytes(b"not nifti"))[0] or p / "c.nii.gz",
     "not a readable NIfTI"),
    (lambda p: (p.mkdir(parents=True), (p / "notes.txt").write_text("x"))[0] or p / "notes.txt",
     "not a NIfTI file name"),
    (lambda p: p / "absent.nii.gz", "does not exist"),
])
def test_bad_inputs_are_named_and_nothing_is_written(tmp_path, make, problem):
    inp = make(tmp_path / "in")
    run = _run_without_model(tmp_path)  # inputs are checked before the run's model is looked at
    with pytest.raises(ConversionError, match=problem) as e:
        apply_run(run, inp, tmp_path / "out")
    assert str(inp) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_empty_input_folder_and_colliding_names(tmp_path):
    run = _run_without_model(tmp_path)
    (tmp_path / "in").mkdir()
    with pytest.raises(ConversionError, match="no .nii or .nii.gz"):
        apply_run(run, tmp_path / "in", tmp_path / "out")
    _nifti(tmp_path / "in" / "a.nii.gz")
    _nifti(tmp_path / "in" / "a.nii")
    with pytest.raises(ConversionError, match="collide"):
        apply_run(run, tmp_path / "in", tmp_path / "out")


def test_out_holding_a_stray_file_or_inside_input_is_refused(tmp_path):
    run = _run_without_model(tmp_path)
    inp = _nifti(tmp_path / "in" / "case_1.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(NotOwned):
        apply_run(run, inp, out)
    assert (out / "mine.txt").read_text() == "user data" and sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    with pytest.raises(PredictError, match="overlap"):
        apply_run(run, tmp_path / "in", tmp_path / "in" / "pred")
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["case_1.nii.gz"]
