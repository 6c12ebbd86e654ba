"""NIfTI -> COCO converter: COCO validity, exact round trips, orientation, layouts, options,
atomic/idempotent output, the CLI."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage

from converters import phantom
from converters.convert import convert
from converters.errors import ConversionError
from converters.layout import case_id_from_name

REPO = Path(__file__).resolve().parent.parent
NAMES = {1: "left_lung", 2: "right_lung", 3: "infection"}


# ------------------------------------------------------------------ helpers
def display(vol_canonical: np.ndarray, k: int) -> np.ndarray:
    """Radiological display written independently of the converter: rotate the RAS+
    slice clockwise, then flip top-bottom (anterior up, patient right on image left)."""
    return np.flipud(np.rot90(vol_canonical[:, :, k], -1))


def source_slices(mask_path: Path) -> np.ndarray:
    img = nib.as_closest_canonical(nib.load(str(mask_path)))
    return np.asanyarray(img.dataobj)


def load_all(ds: Path) -> dict:
    return json.loads((ds / "annotations" / "all.json").read_text())


def masks_by_class(coco: COCO, image_id: int, hw: tuple[int, int]) -> dict[int, np.ndarray]:
    out = {c: np.zeros(hw, dtype=np.uint8) for c in NAMES}
    for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
        m = mask_utils.decode(a["segmentation"])
        assert not (out[a["category_id"]] & m).any(), "instances of one class overlap"
        out[a["category_id"]] |= m
    return out


def coco_without_info(path: Path) -> dict:
    d = json.loads(path.read_text())
    d.pop("info")
    return d


def png_bytes(ds: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ds)): p.read_bytes() for p in sorted((ds / "images").rglob("*.png"))}


# ------------------------------------------------------------------ COCO validity + round trip
def test_every_annotation_file_loads_with_pycocotools(tiny_dataset):
    m = json.loads((tiny_dataset / "dataset.json").read_text())
    files = [m["annotation_files"]["all"]] + [
        f[p] for scheme in m["splits"] for f in m["annotation_files"][scheme] for p in ("train", "test")]
    assert len(files) == 1 + 2 * 5 * 2
    for rel in files:
        coco = COCO(str(tiny_dataset / rel))
        assert [c["name"] for c in coco.loadCats([1, 2, 3])] == ["left_lung", "right_lung", "infection"]
        for a in coco.dataset["annotations"]:
            assert isinstance(a["segmentation"]["counts"], str) and a["iscrowd"] == 0


def test_round_trip_is_exact(tiny_dataset, tiny_raw):
    """Decoding every annotation gives back exactly the source mask pixels of its class,
    and the PNG is the lung window of the source HU."""
    coco = COCO(str(tiny_dataset / "annotations" / "all.json"))
    n_checked = 0
    for case_id in sorted({im["case_id"] for im in coco.dataset["images"]}):
        lab = source_slices(tiny_raw / phantom.COMBINED_DIR / f"{case_id}.nii.gz")
        hu = nib.as_closest_canonical(nib.load(str(tiny_raw / phantom.IMAGE_DIR / f"{case_id}.nii.gz")))
        hu = np.asanyarray(hu.dataobj).astype(np.float64)
        kept = [im for im in coco.dataset["images"] if im["case_id"] == case_id]
        # keep=lung: exactly the slices holding any label
        assert [im["slice_index"] for im in kept] == np.flatnonzero(lab.any(axis=(0, 1))).tolist()
        for im in kept:
            k = im["slice_index"]
            got = masks_by_class(coco, im["id"], (im["height"], im["width"]))
            src = display(lab, k)
            for c in NAMES:
                np.testing.assert_array_equal(got[c], (src == c).astype(np.uint8))
            png = np.asarray(Image.open(tiny_dataset / "images" / im["file_name"]))
            assert png.dtype == np.uint8 and png.ndim == 2
            want = np.clip(np.round((display(hu, k) + 1250) / 1500 * 255), 0, 255)
            np.testing.assert_array_equal(png, want.astype(np.uint8))
            n_checked += 1
    assert n_checked == len(coco.dataset["images"]) > 40


def test_instances_area_bbox_and_components(tiny_dataset):
    coco = COCO(str(tiny_dataset / "annotations" / "all.json"))
    per_image: dict[int, list] = {}
    for a in coco.dataset["annotations"]:
        m = mask_utils.decode(a["segmentation"])
        assert a["area"] == int(m.sum()) > 0
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        if a["category_id"] == 3:  # one infection instance = one 8-connected component
            assert ndimage.label(m, structure=np.ones((3, 3)))[1] == 1
        per_image.setdefault(a["image_id"], []).append(a["category_id"])
    for cats in per_image.values():  # at most one instance per lung
        assert cats.count(1) <= 1 and cats.count(2) <= 1
    assert any(c.count(3) >= 1 for c in per_image.values())


def test_image_ids_sorted_and_shared_by_split_files(tiny_dataset):
    allj = load_all(tiny_dataset)
    keys = [(im["case_id"], im["slice_index"]) for im in allj["images"]]
    assert keys == sorted(keys)
    assert [im["id"] for im in allj["images"]] == list(range(1, len(keys) + 1))
    ids = {im["file_name"]: im["id"] for im in allj["images"]}
    assert all(im["file_name"] == f"{im['case_id']}/{im['slice_index']:04d}.png" for im in allj["images"])
    ann_by_id = {a["id"]: a for a in allj["annotations"]}
    for p in (tiny_dataset / "annotations").glob("*_f*_*.json"):
        d = json.loads(p.read_text())
        assert all(ids[im["file_name"]] == im["id"] for im in d["images"])
        assert all(ann_by_id[a["id"]] == a for a in d["annotations"])
        assert {a["image_id"] for a in d["annotations"]} <= {im["id"] for im in d["images"]}


def test_left_lung_is_on_the_image_right(tiny_dataset):
    """Label 1 = the PATIENT's left = the image's right side in radiological display."""
    allj = load_all(tiny_dataset)
    width = {im["id"]: im["width"] for im in allj["images"]}
    seen = {1: 0, 2: 0}
    for a in allj["annotations"]:
        cx = a["bbox"][0] + a["bbox"][2] / 2
        if a["category_id"] == 1:
            assert cx > width[a["image_id"]] / 2
            seen[1] += 1
        elif a["category_id"] == 2:
            assert cx < width[a["image_id"]] / 2
            seen[2] += 1
    assert seen[1] > 20 and seen[2] > 20


def test_hand_made_lps_volume_is_oriented(tmp_path):
    """A volume written by hand in LPS storage (i -> patient left, j -> posterior):
    the left lung must land on the image's right, anterior at the top, inferior first."""
    X, Y, Z = 16, 12, 4
    lab = np.zeros((X, Y, Z), np.uint8)
    lab[10:14, 2:10, :] = 1  # high i = patient LEFT in LPS
    lab[2:6, 2:10, :] = 2
    lab[2:6, 2:4, 1:] = 3  # infection in the right lung, low j = ANTERIOR; not in slice k=0
    hu = np.where(lab > 0, -850, -1000).astype(np.int16)
    aff = np.diag([-0.8, -0.8, 2.5, 1.0])
    aff[:3, 3] = [6.0, 4.4, -10.0]
    for sub, arr in ((phantom.IMAGE_DIR, hu), (phantom.COMBINED_DIR, lab)):
        (tmp_path / "raw" / sub).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, aff), str(tmp_path / "raw" / sub / "case_000.nii.gz"))
    ds = convert(tmp_path / "raw", tmp_path / "ds",
                 {"workers": 1, "splits": {"patient_kfold": {"enabled": False},
                                           "slice_random": {"enabled": False}}})
    coco = COCO(str(ds / "annotations" / "all.json"))
    ims = coco.dataset["images"]
    assert [im["slice_index"] for im in ims] == [0, 1, 2, 3] and (ims[0]["height"], ims[0]["width"]) == (Y, X)
    for im in ims:
        got = masks_by_class(coco, im["id"], (Y, X))
        cols = lambda m: set(np.nonzero(m)[1].tolist())  # noqa: E731
        rows = lambda m: set(np.nonzero(m)[0].tolist())  # noqa: E731
        assert cols(got[1]) == set(range(10, 14))  # image col = i for LPS storage
        assert cols(got[2]) == set(range(2, 6))
        if im["slice_index"] == 0:
            assert not got[3].any()
        else:
            assert rows(got[3]) == {2, 3}  # anterior = top rows
    m = json.loads((ds / "dataset.json").read_text())
    assert m["cases"][0]["orientation"] == "LPS" and m["cases"][0]["warnings"] == []
    assert m["cases"][0]["spacing_mm"] == pytest.approx([0.8, 0.8, 2.5])


def test_storage_orientation_does_not_change_the_dataset(tmp_path):
    cfg = {"workers": 1, "splits": {"patient_kfold": {"k": 2}}}
    outs = {}
    for ax in ("LPS", "RAS", "PIR"):
        raw = phantom.generate(tmp_path / f"raw_{ax}", preset="tiny", n_cases=2, axcodes=ax)
        outs[ax] = convert(raw, tmp_path / f"ds_{ax}", cfg)
    ref = coco_without_info(outs["LPS"] / "annotations" / "all.json")
    for ax in ("RAS", "PIR"):
        assert coco_without_info(outs[ax] / "annotations" / "all.json") == ref
        assert png_bytes(outs[ax]) == png_bytes(outs["LPS"])


def test_swapped_labels_are_flagged(tmp_path):
    raw = phantom.generate(tmp_path / "raw", preset="tiny", n_cases=2)
    p = raw / phantom.COMBINED_DIR / "phantom_000.nii.gz"
    img = nib.load(str(p))
    lab = np.asanyarray(img.dataobj)
    lab = np.where(lab == 1, 2, np.where(lab == 2, 1, lab)).astype(np.uint8)
    nib.save(nib.Nifti1Image(lab, img.affine), str(p))
    m = json.loads((convert(raw, tmp_path / "ds", {"workers": 1, "splits": {"patient_kfold": {"k": 2}}})
                    / "dataset.json").read_text())
    assert "swapped" in m["cases"][0]["warnings"][0] and m["cases"][1]["warnings"] == []


# ------------------------------------------------------------------ layouts
def _official_copy(tiny_raw: Path, dst: Path, kaggle: bool) -> Path:
    """Three tiny phantom cases renamed to official ids, in Zenodo or Kaggle layout."""
    names = {"phantom_000": "coronacases_001", "phantom_001": "coronacases_002",
             "phantom_002": "radiopaedia_10_85902_1"}
    kaggle_img = {"coronacases_001": "coronacases_org_001", "coronacases_002": "coronacases_org_002",
                  "radiopaedia_10_85902_1": "radiopaedia_org_covid-19-pneumonia-10_85902_1-dcm"}
    rows = []
    for src, cid in names.items():
        img = nib.load(str(tiny_raw / phantom.IMAGE_DIR / f"{src}.nii.gz"))
        msk = nib.load(str(tiny_raw / phantom.COMBINED_DIR / f"{src}.nii.gz"))
        if kaggle:  # uncompressed .nii, _org_ image names
            (dst / "ct_scans").mkdir(parents=True, exist_ok=True)
            (dst / "lung_and_infection_mask").mkdir(exist_ok=True)
            nib.save(img, str(dst / "ct_scans" / f"{kaggle_img[cid]}.nii"))
            nib.save(msk, str(dst / "lung_and_infection_mask" / f"{cid}.nii"))
            base = "../input/covid19-ct-scans"
            rows.append({"ct_scan": f"{base}/ct_scans/{kaggle_img[cid]}.nii",
                         "lung_and_infection_mask": f"{base}/lung_and_infection_mask/{cid}.nii"})
        else:
            (dst / "COVID-19-CT-Seg_20cases").mkdir(parents=True, exist_ok=True)
            (dst / "Lung_and_Infection_Mask").mkdir(exist_ok=True)
            shutil.copy(tiny_raw / phantom.IMAGE_DIR / f"{src}.nii.gz",
                        dst / "COVID-19-CT-Seg_20cases" / f"{cid}.nii.gz")
            shutil.copy(tiny_raw / phantom.COMBINED_DIR / f"{src}.nii.gz",
                        dst / "Lung_and_Infection_Mask" / f"{cid}.nii.gz")
    if kaggle:
        with open(dst / "metadata.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return dst


def test_kaggle_layout_gives_the_same_coco_as_zenodo(tiny_raw, tmp_path):
    cfg = {"workers": 1, "splits": {"patient_kfold": {"k": 3}}}
    zen = convert(_official_copy(tiny_raw, tmp_path / "zenodo", kaggle=False), tmp_path / "dz", cfg)
    kag = convert(_official_copy(tiny_raw, tmp_path / "kaggle", kaggle=True), tmp_path / "dk", cfg)
    for f in sorted(p.name for p in (zen / "annotations").iterdir()):
        assert coco_without_info(kag / "annotations" / f) == coco_without_info(zen / "annotations" / f), f
    assert png_bytes(kag) == png_bytes(zen)
    mk = json.loads((kag / "dataset.json").read_text())
    mz = json.loads((zen / "dataset.json").read_text())
    assert (mk["layout"], mz["layout"]) == ("kaggle", "zenodo")
    assert [c["id"] for c in mk["cases"]] == ["coronacases_001", "coronacases_002", "radiopaedia_10_85902_1"]
    assert [Path(s["path"]).name for s in mk["cases"][2]["sources"]] == [
        "radiopaedia_org_covid-19-pneumonia-10_85902_1-dcm.nii", "radiopaedia_10_85902_1.nii"]
    ignored = {Path(i["file"]).name: i["reason"] for i in mk["ignored"]}
    assert "metadata.csv" in ignored and "paired by file name" in ignored["metadata.csv"]
    # official ids: the official folds apply, restricted to the cases present
    assert "ma2021_5fold" in mk["splits"] and "ma2021_5fold" not in mk["splits_omitted"]
    assert "radiopaedia_4_85506_1" in mk["splits"]["ma2021_5fold"]["note"]


def test_layout_forced_and_ignored_files(tiny_raw, tmp_path):
    raw = _official_copy(tiny_raw, tmp_path / "z", kaggle=False)
    (raw / "README.txt").write_text("hello")
    (raw / "Lung_and_Infection_Mask" / "coronacases_009.nii.gz").write_bytes(
        (raw / "Lung_and_Infection_Mask" / "coronacases_001.nii.gz").read_bytes())
    (raw / "Lung_and_Infection_Mask" / "notes.txt").write_text("x")
    ds = convert(raw, tmp_path / "d", {"workers": 1, "layout": "zenodo",
                                        "splits": {"patient_kfold": {"k": 3}}})
    manifest = json.loads((ds / "dataset.json").read_text())
    ignored = {Path(i["file"]).name: i["reason"] for i in manifest["ignored"]}
    assert "outside" in ignored["README.txt"]
    assert "mask without an image" in ignored["coronacases_009.nii.gz"]
    assert "not a NIfTI" in ignored["notes.txt"]
    with pytest.raises(ConversionError, match="layout=kaggle but no ct_scans"):
        convert(raw, tmp_path / "d2", {"layout": "kaggle"})


def test_separate_lung_and_infection_masks_give_the_same_coco(tmp_path, tiny_dataset):
    raw = phantom.generate(tmp_path / "raw", preset="tiny", mask_layout="separate")
    ds = convert(raw, tmp_path / "ds", {"workers": 1})
    assert coco_without_info(ds / "annotations" / "all.json") == coco_without_info(
        tiny_dataset / "annotations" / "all.json")
    # with all three mask folders, the combined mask is used and the others are reported
    raw2 = phantom.generate(tmp_path / "raw2", preset="tiny", n_cases=2, mask_layout="both")
    m = json.loads((convert(raw2, tmp_path / "ds2", {"workers": 1, "splits": {
        "patient_kfold": {"k": 2}}}) / "dataset.json").read_text())
    assert sum("used instead" in i["reason"] for i in m["ignored"]) == 4


@pytest.mark.parametrize("name, cid", [
    ("coronacases_001.nii.gz", "coronacases_001"),
    ("coronacases_org_001.nii", "coronacases_001"),
    ("radiopaedia_org_covid-19-pneumonia-10_85902_1-dcm.nii", "radiopaedia_10_85902_1"),
    ("radiopaedia_10_85902_1.nii", "radiopaedia_10_85902_1"),
    ("metadata.csv", None),
])
def test_case_id_normalisation(name, cid):
    assert case_id_from_name(name) == cid


# ------------------------------------------------------------------ options
@pytest.fixture(scope="module")
def raw2(tmp_path_factory) -> Path:
    """Two tiny phantom cases: enough for option tests, half the work of tiny_raw."""
    return phantom.generate(tmp_path_factory.mktemp("raw2") / "p", preset="tiny", n_cases=2)


K2 = {"patient_kfold": {"k": 2}}

def test_prewindowed_volumes_are_kept_as_they_are(tmp_path):
    raw = phantom.generate(tmp_path / "raw", preset="tiny", n_cases=2, n_windowed=1)
    ds = convert(raw, tmp_path / "ds", {"workers": 1, "splits": {"patient_kfold": {"k": 2}}})
    m = json.loads((ds / "dataset.json").read_text())
    assert [c["intensity"] for c in m["cases"]] == ["hu", "prewindowed_0_255"]
    vol = nib.as_closest_canonical(nib.load(str(raw / phantom.IMAGE_DIR / "phantom_001.nii.gz")))
    vol = np.asanyarray(vol.dataobj)
    for k in m["cases"][1]["slices_kept"]:
        png = np.asarray(Image.open(ds / "images" / "phantom_001" / f"{k:04d}.png"))
        np.testing.assert_array_equal(png, display(vol, k).astype(np.uint8))
    # other windows: the 0..255 values are mapped back to HU through the release's window
    rgb = convert(raw, tmp_path / "rgb", {"workers": 1, "multiwindow": True,
                                          "splits": {"patient_kfold": {"k": 2}}})
    k = m["cases"][1]["slices_kept"][3]
    px = np.asarray(Image.open(rgb / "images" / "phantom_001" / f"{k:04d}.png")).astype(float)
    hu = display(vol, k) / 255 * 1500 - 1250
    np.testing.assert_array_equal(px[..., 0], display(vol, k))
    np.testing.assert_allclose(px[..., 2], np.clip(np.round((hu + 1000) / 2000 * 255), 0, 255), atol=1)


def test_multiwindow_rgb(raw2, tiny_dataset, tmp_path):
    ds = convert(raw2, tmp_path / "ds", {"workers": 1, "multiwindow": True, "splits": K2})
    m = json.loads((ds / "dataset.json").read_text())
    assert [c["name"] for c in m["window"]["channels"]] == ["lung", "mediastinal", "wide"]
    assert m["window"]["image_mode"] == "RGB"
    rel = "images/phantom_000/0006.png"
    rgb = Image.open(ds / rel)
    assert rgb.mode == "RGB"
    rgb = np.asarray(rgb)
    np.testing.assert_array_equal(rgb[..., 0], np.asarray(Image.open(tiny_dataset / rel)))
    assert not np.array_equal(rgb[..., 0], rgb[..., 1])


def test_slice_selection_and_min_area(raw2, tmp_path):
    def run(name, **cfg):
        ds = convert(raw2, tmp_path / name, {"workers": 1, "splits": K2, **cfg})
        return json.loads((ds / "dataset.json").read_text())

    base = run("base")
    allm = run("all", slices={"keep": "all"})
    assert allm["n_images"] == 2 * phantom.PRESETS["tiny"].slices > base["n_images"]
    st = run("st", slices={"keep": "stride", "stride": 3})
    for c, b in zip(st["cases"], base["cases"]):
        assert c["slices_kept"] == b["slices_kept"][::3]
    big = run("ma", infection={"min_area": 20})
    dropped = sum(c["infection_components_dropped"] for c in big["cases"])
    n_inf = lambda m: sum(c["instances"]["infection"] for c in m["cases"])  # noqa: E731
    assert dropped > 0 and n_inf(big) == n_inf(base) - dropped
    four = run("c4", infection={"connectivity": 4})
    # exact counts, from the source masks: connected components of label 3, slice by slice
    assert n_inf(base) == source_infection_components(raw2, 8)
    assert n_inf(four) == source_infection_components(raw2, 4)


def source_infection_components(raw: Path, connectivity: int) -> int:
    """Infection instances a raw folder holds: per axial slice, the connected components of
    label 3 (scipy's 4- or 8-connectivity), summed over every case's combined mask."""
    structure = np.ones((3, 3)) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    n = 0
    for path in sorted((raw / phantom.COMBINED_DIR).glob("*.nii.gz")):
        lab = source_slices(path)
        n += sum(ndimage.label(lab[:, :, k] == 3, structure=structure)[1] for k in range(lab.shape[2]))
    return n


def test_infection_connectivity_option(tmp_path):
    """Two infection blobs that touch at one corner only, and a third apart from both, in
    slices 1 and 2 of a hand-made volume: 8-connectivity makes the first two one instance
    (2 per slice), 4-connectivity keeps them apart (3 per slice)."""
    X, Y, Z = 16, 12, 3
    lab = np.zeros((X, Y, Z), np.uint8)
    lab[10:14, 2:10, :] = 1
    lab[2:6, 2:10, :] = 2
    lab[2:4, 2:4, 1:] = 3  # blob A
    lab[4:6, 4:6, 1:] = 3  # blob B: its pixel (4, 4) touches A's (3, 3) diagonally, no shared edge
    lab[2:4, 7:9, 1:] = 3  # blob C: apart from both
    hu = np.where(lab > 0, -850, -1000).astype(np.int16)
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    for sub, arr in ((phantom.IMAGE_DIR, hu), (phantom.COMBINED_DIR, lab)):
        (tmp_path / "raw" / sub).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, aff), str(tmp_path / "raw" / sub / "case_000.nii.gz"))
    no_splits = {"patient_kfold": {"enabled": False}, "slice_random": {"enabled": False}}
    for connectivity, per_slice in ((8, [0, 2, 2]), (4, [0, 3, 3])):
        ds = convert(tmp_path / "raw", tmp_path / f"ds{connectivity}",
                     {"workers": 1, "splits": no_splits, "infection": {"connectivity": connectivity}})
        m = json.loads((ds / "dataset.json").read_text())
        assert m["cases"][0]["instances"]["infection"] == sum(per_slice), connectivity
        allj = load_all(ds)
        slice_of = {im["id"]: im["slice_index"] for im in allj["images"]}
        got = [0] * Z
        for a in allj["annotations"]:
            if a["category_id"] == 3:
                got[slice_of[a["image_id"]]] += 1
        assert got == per_slice, connectivity
        # the instance sizes: A+B together (8 px) or apart (4 + 4), C alone (4 px)
        areas = sorted(a["area"] for a in allj["annotations"]
                       if a["category_id"] == 3 and slice_of[a["image_id"]] == 1)
        assert areas == ([4, 8] if connectivity == 8 else [4, 4, 4]), connectivity


def test_polygons_option(raw2, tmp_path):
    ds = convert(raw2, tmp_path / "poly", {"workers": 1, "polygons": True, "splits": K2})
    coco = COCO(str(ds / "annotations" / "all.json"))
    anns = coco.dataset["annotations"]
    assert all(isinstance(a["segmentation"], list) and a["segmentation"] for a in anns)
    # polygons approximate the mask: their area stays close to the exact pixel count
    ious = []
    for a in anns:
        if a["category_id"] in (1, 2) and a["area"] > 100:
            poly = coco.annToMask(a)
            ious.append(poly.sum() / a["area"])
    assert len(ious) > 8 and 0.85 < float(np.median(ious)) < 1.15


# ------------------------------------------------------------------ atomic + idempotent
def test_rerun_does_no_work_and_changed_config_rebuilds(raw2, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw2, raw)
    cfg = {"workers": 1, "splits": {**K2, "slice_random": {"enabled": False}}}
    ds = convert(raw, tmp_path / "ds", cfg)
    manifest = ds / "dataset.json"
    t0 = manifest.stat().st_mtime_ns
    inode = ds.stat().st_ino
    assert convert(raw, tmp_path / "ds", cfg) == ds
    assert manifest.stat().st_mtime_ns == t0 and ds.stat().st_ino == inode
    # workers is not part of the output: still up to date
    convert(raw, tmp_path / "ds", {**cfg, "workers": 2})
    assert manifest.stat().st_mtime_ns == t0
    # touching a source without changing its bytes: sha256 says up to date
    src = raw / phantom.IMAGE_DIR / "phantom_000.nii.gz"
    os.utime(src, ns=(t0, t0 + 10**9))
    convert(raw, tmp_path / "ds", cfg)
    assert manifest.stat().st_mtime_ns == t0
    # a changed config rebuilds
    m1 = json.loads(manifest.read_text())
    convert(raw, tmp_path / "ds", {**cfg, "window": [-1000, 400]})
    m2 = json.loads(manifest.read_text())
    assert m2["config_hash"] != m1["config_hash"] and m2["window"]["channels"][0]["hu"] == [-1000, 400]
    # changed source bytes rebuild
    other = phantom.generate(tmp_path / "other", preset="tiny", seed=5, n_cases=2)
    shutil.copy(other / phantom.IMAGE_DIR / "phantom_000.nii.gz", src)
    convert(raw, tmp_path / "ds", {**cfg, "window": [-1000, 400]})
    m3 = json.loads(manifest.read_text())
    assert m3["sources"][f"{phantom.IMAGE_DIR}/phantom_000.nii.gz"]["sha256"] != \
        m2["sources"][f"{phantom.IMAGE_DIR}/phantom_000.nii.gz"]["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "other", "raw"]  # no temp folders left


def test_manifest_contents(tiny_dataset):
    m = json.loads((tiny_dataset / "dataset.json").read_text())
    for key in ("schema", "classes", "window", "orientation", "splits", "cases", "skipped",
                "config", "config_hash", "converter_version", "sources", "ignored"):
        assert key in m, key
    assert [c["name"] for c in m["classes"]] == ["left_lung", "right_lung", "infection"]
    assert m["window"]["channels"] == [{"name": "lung", "hu": [-1250, 250]}]
    assert "ma2021_5fold" in m["splits_omitted"] and "ma2021_5fold" not in m["splits"]
    assert m["splits"]["slice_random"]["unit"] == "slice"
    assert "LEAKY" in m["splits"]["slice_random"]["note"]
    case = m["cases"][0]
    assert case["id"] == "phantom_000" and case["shape"] == [64, 64, 14]
    assert [s["role"] for s in case["sources"]] == ["image", "combined"]
    assert all(len(s["sha256"]) == 64 for s in case["sources"])
    assert set(case["instances"]) == {"left_lung", "right_lung", "infection"}
    assert 0 < case["infection_burden_pct"] < 50 and m["skipped"] == []


def test_process_pool_gives_the_same_dataset(tiny_raw, tiny_dataset, tmp_path):
    ds = convert(tiny_raw, tmp_path / "pool", {"workers": 2})
    assert json.loads((ds / "dataset.json").read_text())["stats"]["workers"] == 2
    for p in sorted((tiny_dataset / "annotations").iterdir()):
        assert coco_without_info(ds / "annotations" / p.name) == coco_without_info(p)
    assert png_bytes(ds) == png_bytes(tiny_dataset)


# ------------------------------------------------------------------ CLI
def test_cli_phantom_leaves_no_litter(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-m", "converters.convert", "data=phantom", f"out={tmp_path}/data/phantom",
         "data.generate.preset=tiny", "+data.generate.n_cases=2", "workers=1",
         "splits.patient_kfold.k=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data" / "phantom" / "dataset.json").exists()
    assert (tmp_path / "data" / "raw" / "phantom" / phantom.IMAGE_DIR / "phantom_001.nii.gz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no outputs/, .hydra/, *.log
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["phantom", "raw"]


def test_missing_raw_folder(tmp_path):
    with pytest.raises(ConversionError) as ei:
        convert(tmp_path / "nowhere", tmp_path / "out")
    assert str(ei.value) == f"{tmp_path}/nowhere: raw data folder does not exist (or is not a folder)"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cfg, key", [
    ({"slices": {"keep": "some"}}, "slices.keep"),
    ({"infection": {"connectivity": 6}}, "infection.connectivity"),
    ({"window": [250, -1250]}, "window"),
    ({"on_bad_case": "ignore"}, "on_bad_case"),
    ({"layout": "dropbox"}, "layout"),
])
def test_bad_options_are_named(raw2, tmp_path, cfg, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        convert(raw2, tmp_path / "x", cfg)
    assert not (tmp_path / "x").exists()


def test_misspelt_option_is_rejected(raw2, tmp_path):
    with pytest.raises(Exception, match="windw"):
        convert(raw2, tmp_path / "x", {"windw": [-1000, 0]})
