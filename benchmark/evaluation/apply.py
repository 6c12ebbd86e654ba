"""A finished run applied to CT volumes (``make predict``): NIfTI label volumes and volumes.csv.

The run folder must hold a finished run trained with ``keep_checkpoint=true`` (its
``d2/model_final.pth`` and ``d2/config.yaml``). Each input volume is prepared as the run's
training data were (the conversion settings the run recorded: orientation to RAS+, radiological
display, window or windows), predicted slice by slice (labels, overlap rule:
``benchmark.evaluation.predictor``), and written back in its own voxel grid and affine as
``<OUT>/<case>.nii.gz``. ``volumes.csv`` holds per case the volume of each lung, the infection
within each, and the burden; ``predictions.json`` says which run and settings made them.

Volumes are in ml (1 ml = 1000 mm^3), burden in percent of the lung volume; a lung "with its
infection" is ``benchmark.evaluation.volume3d.whole_lungs``.

Inputs are checked like the converter's (readable NIfTI, 3-D, finite voxels, usable affine)
before any prediction starts; OUT is built in a temp folder that replaces it only when every
case is written (``contracts.fsutil.atomic_dir``), so a failure leaves OUT as it was. OUT
must be new, empty, or an earlier OUT of ``make predict``; it may not overlap INPUT.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.evaluation.predictor import INFECT, Predictor, spacing_of
from benchmark.evaluation.volume3d import whole_lungs
from benchmark.training.worker import D2_DIR
from contracts import fsutil, result
from contracts.catalog import CLASSES
from contracts.predictions import write_predictions
from converters.errors import ConversionError
from converters.layout import case_id_from_name
from converters.volume import (MAX_VOXELS, ORIENTATION, canonical, check_finite, from_canonical, is_prewindowed,
                               read_header, read_volume, squeeze_3d)

PRED_KIND = "predictions"
CHECKPOINT = f"{D2_DIR}/model_final.pth"
D2_CONFIG = f"{D2_DIR}/config.yaml"
VOLUMES_CSV = "volumes.csv"
#: volumes.csv columns, in order (case and file first)
VOLUME_COLUMNS = ["case", "file", "left_lung_ml", "right_lung_ml", "lungs_ml", "infection_ml",
                  "infection_left_ml", "infection_right_ml", "burden_left_pct", "burden_right_pct",
                  "burden_pct"]


class PredictError(Exception):
    """A run that cannot predict, or a bad OUT: ``path`` and the problem, with what to do."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


def run_conversion(res: dict, run_dir: Path) -> dict:
    """The conversion settings the run recorded in its result.json. PredictError when it
    records none (a run of an older lungbench), or when they orient slices otherwise than this
    lungbench does."""
    conv = res.get("conversion")
    if not isinstance(conv, dict):
        raise PredictError(run_dir / result.FILENAME, "the run records no conversion settings (a run of an "
                           "older lungbench): train it again with this lungbench (its result.json then "
                           "records them)")
    if conv.get("orientation") not in (None, ORIENTATION):
        raise PredictError(run_dir / result.FILENAME, "the run's slices were oriented otherwise than this "
                           f"lungbench orients them ({conv.get('orientation')}); predict with the version "
                           "that trained it, or train it again")
    return conv


# --------------------------------------------------------------------------- a run folder


def load_trained_run(run_dir: str | Path, device: str = "auto", batch_size: int | None = None) -> tuple[Predictor, dict]:
    """The Predictor of a finished run kept with its model, and the run's result.json (its
    ``conversion`` settings are the predictor's).

    PredictError (file and what to do) for a folder that is no finished lungbench run, or
    whose model was not kept."""
    run_dir = Path(run_dir).expanduser().resolve()
    try:
        found = result.read_result(run_dir) if run_dir.is_dir() else None
    except result.ResultUnreadable:
        found = None
    if found is None:
        raise PredictError(run_dir, "no readable result.json: not a lungbench run folder (pass RUN=<the RUN_DIR "
                           "of a finished run>)")
    res = found.data
    if res.get("status") != "ok":
        err = res.get("error") or {}
        raise PredictError(run_dir / result.FILENAME, f"the run did not finish (status {res.get('status')!r}: "
                           f"{err.get('message', 'no error recorded')}); run it again first")
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise PredictError(ckpt, "no trained model in this run folder: it was trained without "
                           "keep_checkpoint=true, and a finished run deletes its checkpoints. Train it "
                           "again keeping the model, e.g. `make train BACKBONE=... RUN_DIR=<new dir> "
                           "ARGS=keep_checkpoint=true` (or the same ARGS for `make sweep`)")
    conversion = run_conversion(res, run_dir)
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from benchmark.training.config import resolve_device, resolve_infer_batch

    d2cfg = get_cfg()
    d2cfg.set_new_allowed(True)  # the LUNGBENCH node the run added
    try:
        d2cfg.merge_from_file(str(run_dir / D2_CONFIG))
    except Exception as e:  # noqa: BLE001 - missing, unreadable or not a detectron2 config
        raise PredictError(run_dir / D2_CONFIG, f"cannot read the run's detectron2 config ({type(e).__name__}: "
                           f"{e}); the run folder is incomplete: train it again") from None
    dev = resolve_device(device)
    d2cfg.MODEL.DEVICE = dev
    d2cfg.freeze()
    model = build_model(d2cfg)
    try:
        DetectionCheckpointer(model).load(str(ckpt))
    except Exception as e:  # noqa: BLE001 - truncated or foreign file
        raise PredictError(ckpt, f"cannot load the trained model ({type(e).__name__}: {e}); train the run "
                           "again with keep_checkpoint=true") from None
    model.eval()
    thresh = float((res.get("config") or {}).get("dice_score_thresh", 0.5))
    bs = batch_size if batch_size is not None else resolve_infer_batch("auto", dev)
    return Predictor.from_model(model, d2cfg, conversion, thresh, bs), res


# --------------------------------------------------------------------------- inputs


def case_name(path: Path) -> str:
    """The name of an input's outputs: its file name without .nii / .nii.gz."""
    name = path.name
    return name[:-7] if name.lower().endswith(".nii.gz") else name[:-4]


def input_files(path: str | Path) -> list[Path]:
    """The NIfTI files to predict: ``path`` itself, or the .nii/.nii.gz files directly in it (sorted)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConversionError(path, "does not exist (INPUT is a NIfTI file or a folder of them)")
    if path.is_file():
        if case_id_from_name(path.name) is None:
            raise ConversionError(path, "not a NIfTI file name (.nii or .nii.gz expected)")
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and case_id_from_name(p.name) is not None)
    if not files:
        raise ConversionError(path, "no .nii or .nii.gz file in this folder")
    seen: dict[str, Path] = {}
    for p in files:
        cid = case_name(p)
        if cid in seen:
            raise ConversionError(p, f"same case name {cid!r} as {seen[cid].name}: the outputs would collide")
        seen[cid] = p
    return files


def check_affine(path: Path, affine: np.ndarray) -> None:
    a = np.asarray(affine, float)
    if not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ConversionError(path, "affine is not finite or is singular: the voxel grid has no usable "
                              "position in space (fix the NIfTI header's qform/sform)")


def check_input_headers(files: list[Path], max_voxels: int = MAX_VOXELS) -> None:
    """Cheap pre-pass on the headers, as the converter's (converters.volume.read_header:
    readable, real numbers, at most ``max_voxels``, a usable slice size), and a usable affine."""
    for p in files:
        _, affine = read_header(p, case_id_from_name(p.name), max_voxels)
        check_affine(p, affine)


def read_input(path: Path, max_voxels: int = MAX_VOXELS):
    """(Volume, 3-D data as stored) of one input, checked like the converter checks images."""
    cid = case_id_from_name(path.name)
    vol = read_volume(path, max_voxels)
    data = squeeze_3d(vol, cid)
    check_finite(vol, data, cid)
    check_affine(path, vol.affine)
    return vol, data


def predict_file(predictor: Predictor, path: Path, max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, Any]:
    """(labels in the input's voxel grid, the input Volume) of one file."""
    vol, data = read_input(path, max_voxels)
    img_ras, _, _ = canonical(data, vol.affine)
    pred = predictor.predict_volume(img_ras, is_prewindowed(data), desc=case_name(path))
    return from_canonical(pred, vol.affine), vol


def volume_table(labels: np.ndarray, affine: np.ndarray) -> dict[str, float | None]:
    """Volumes (ml) and infection burden (%) of one label volume on the voxel grid of ``affine``
    (mm): each lung with its infection, both lungs, the infection overall and within each lung,
    and burden per lung and overall (infection / lung volume x 100; None for a lung of volume 0).
    A voxel's volume is |det| of the affine's 3x3 part (not the product of the spacing, which
    differs for a sheared grid)."""
    ml = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0
    left, right = whole_lungs(labels, spacing_of(affine))
    infection = labels == INFECT
    n_left, n_right = int(left.sum()), int(right.sum())
    inf_left, inf_right = int((left & infection).sum()), int((right & infection).sum())
    n_inf = int(infection.sum())

    def pct(a: int, b: int) -> float | None:
        return None if b == 0 else round(100.0 * a / b, 4)

    return {"left_lung_ml": round(n_left * ml, 3), "right_lung_ml": round(n_right * ml, 3),
            "lungs_ml": round((n_left + n_right) * ml, 3), "infection_ml": round(n_inf * ml, 3),
            "infection_left_ml": round(inf_left * ml, 3), "infection_right_ml": round(inf_right * ml, 3),
            "burden_left_pct": pct(inf_left, n_left), "burden_right_pct": pct(inf_right, n_right),
            "burden_pct": pct(inf_left + inf_right, n_left + n_right)}


def label_image(labels: np.ndarray, like):
    """A NIfTI-1 image of ``labels`` (uint8, no intensity scaling) on the grid of ``like``, the
    input image: its header is kept, qform, sform and their codes exactly as the input has them
    (sheared grids included), units, pixdim."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), like.affine, header=like.header.copy())
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 3
    img.header["descrip"] = b"lungbench labels: 1 left lung, 2 right lung, 3 infection"
    return img


def save_atomic(img, path: str | os.PathLike) -> Path:
    """Save a nibabel image at ``path`` through a temp file in the same folder, then a rename:
    the path never holds a half-written file."""
    import nibabel as nib

    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def volumes_csv(rows: list[dict]) -> str:
    """volumes.csv of ``rows`` (VOLUME_COLUMNS; None is an empty cell)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=VOLUME_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in VOLUME_COLUMNS})
    return buf.getvalue()


def apply_run(run_dir: str | Path, input_path: str | Path, out: str | Path, device: str = "auto",
              batch_size: int | None = None, max_voxels: int = MAX_VOXELS) -> Path:
    """Predict every input volume with the run's model into ``out`` (module doc); returns ``out``."""
    files = input_files(input_path)
    out = fsutil.resolve_output(out)
    src = Path(input_path).expanduser().resolve()
    if fsutil.overlaps(out, src if src.is_dir() else src.parent):
        raise PredictError(out, f"OUT and the folder of INPUT ({src if src.is_dir() else src.parent}) overlap: "
                           "lungbench never writes where it reads; choose another OUT")
    fsutil.check_owned(out, PRED_KIND, "OUT", replace=True)
    check_input_headers(files, max_voxels)
    with fsutil.output_lock(run_dir, "RUN (the run folder)", shared=True):  # not cleaned meanwhile
        return _apply_reading(run_dir, files, out, device, batch_size, max_voxels)


def _apply_reading(run_dir: str | Path, files: list[Path], out: Path, device: str,
                     batch_size: int | None, max_voxels: int) -> Path:
    import nibabel as nib
    from tqdm import tqdm

    predictor, res = load_trained_run(run_dir, device, batch_size)
    rows = []
    with fsutil.output_lock(out, "OUT"), fsutil.atomic_dir(out, PRED_KIND, "OUT") as tmp:
        for p in tqdm(files, desc=f"predict {res.get('backbone')}", unit="volume", disable=None):
            labels, vol = predict_file(predictor, p, max_voxels)
            cid = case_name(p)
            # the input's own header: its qform/sform (and codes) describe this grid exactly
            save_atomic(label_image(labels, nib.load(str(p))), tmp / f"{cid}.nii.gz")
            rows.append({"case": cid, "file": str(p.resolve()), **volume_table(labels, vol.affine)})
        fsutil.write_text(tmp / VOLUMES_CSV, volumes_csv(rows))
        write_predictions(tmp, run_dir=str(Path(run_dir).resolve()), backbone=res.get("backbone"),
                          identity=(res.get("identity") or {}).get("hash"),
                          score_thresh=predictor.score_thresh, conversion=res["conversion"],
                          labels={str(c.label_value): c.name for c in CLASSES},
                          overlap_rule="infection over lung; between lungs the higher-scoring instance",
                          inputs=[r["file"] for r in rows])
    return out
