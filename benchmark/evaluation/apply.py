"""A trained run applied to CT volumes: NIfTI label volumes and volumes.csv (``make predict``).

    python -m benchmark.predict --run <run dir> --input <NIfTI file or folder> --out <dir>

The run folder must hold a finished run trained with ``keep_checkpoint=true`` (its
``d2/model_final.pth`` and ``d2/config.yaml``). Each input volume is prepared exactly as the
run's training data were (the conversion settings the run recorded from its dataset.json:
orientation to RAS+, radiological display, window or windows), every axial slice is
predicted, and the label volume is written back in the input's own voxel grid and affine as
``<OUT>/<case>.nii.gz`` (labels and overlap rule: ``benchmark.volumes``). ``volumes.csv``
holds per case the volume of each lung, the infection within each, and the burden;
``predictions.json`` says which run and settings made them.

Inputs are checked like the converter's (readable NIfTI, 3-D, finite voxels, usable affine)
before any prediction starts; OUT is built in a temp folder that replaces it only when every
case is written (``contracts.fsutil.atomic_dir``), so a failure leaves OUT as it was. OUT
must be new, empty, or an earlier OUT of ``make predict``; it may not overlap INPUT.

The same ``Predictor`` scores a run's test volumes in 3-D after training
(``evaluate_volumes``), so the numbers in result.json and the files users get come from one
code path.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contracts import result as R
from contracts.dataset import DatasetError, read_dataset
from contracts.predictions import FILENAME as PREDICTIONS_FILE
from contracts.predictions import write_predictions
from benchmark.metrics3d import TOLERANCE_MM, summarize, volume_metrics
from benchmark.volumes import VOLUME_COLUMNS, label_image, labels_from_instances, spacing_of, volume_table
from contracts import fsutil
from contracts.catalog import CLASSES
from contracts.errors import ConfigError
from converters.errors import ConversionError
from converters.layout import CaseFiles, case_id_from_name
from converters.volume import (MAX_VOXELS, ORIENTATION, canonical, check_claims, check_finite, display_pixels, from_canonical,
                               is_prewindowed, read_volume, squeeze_3d, undisplay_slice)

PRED_KIND = "predictions"
CHECKPOINT = "d2/model_final.pth"
D2_CONFIG = "d2/config.yaml"
VOLUMES_CSV = "volumes.csv"
#: detectron2's contiguous class index -> dataset label value
LABEL_OF_CONTIGUOUS = np.array([c.label_value for c in CLASSES], dtype=np.uint8)


class PredictError(Exception):
    """A run that cannot predict, or a bad OUT: ``path`` and the problem, with what to do."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


def conversion_settings(manifest: dict) -> dict:
    """What a new volume needs to be prepared as the dataset's slices were (from dataset.json)."""
    cfg = manifest["config"]
    return {"window": list(cfg["window"]), "multiwindow": bool(cfg["multiwindow"]),
            "windows": {k: list(v) for k, v in cfg["windows"].items()},
            "orientation": manifest.get("orientation"), "config_hash": manifest.get("config_hash")}


def _windows(conversion: dict) -> list[tuple[float, float]]:
    from converters.case import windows_of

    return windows_of(conversion)


@dataclass
class Predictor:
    """A detectron2 model with the test-time preparation of its run. ``mapper`` is the run's
    test DatasetMapper (its resize and image format); ``windows`` the HU windows, one per channel."""

    model: Any
    mapper: Any
    windows: list[tuple[float, float]]
    score_thresh: float
    batch_size: int = 1

    @classmethod
    def from_model(cls, model, d2cfg, conversion: dict, score_thresh: float, batch_size: int = 1) -> "Predictor":
        from benchmark.data import build_mapper

        return cls(model, build_mapper(d2cfg, is_train=False), _windows(conversion), float(score_thresh),
                   max(1, int(batch_size)))

    def _input(self, img_ras: np.ndarray, k: int, prewindowed: bool) -> dict:
        import torch
        from detectron2.data import transforms as T
        from detectron2.data.detection_utils import convert_PIL_to_numpy
        from PIL import Image

        # the PNG the converter would write, read the way detectron2 reads it
        image = convert_PIL_to_numpy(Image.fromarray(display_pixels(img_ras, k, self.windows, prewindowed)),
                                     self.mapper.image_format)
        aug = T.AugInput(image)
        self.mapper.augmentations(aug)
        return {"image": torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1))),
                "height": image.shape[0], "width": image.shape[1]}

    def predict_volume(self, img_ras: np.ndarray, prewindowed: bool, desc: str | None = None,
                       known: dict[int, list[dict]] | None = None) -> np.ndarray:
        """Label volume (uint8, RAS+ like ``img_ras``, shape (X, Y, Z)) of a RAS+ CT volume:
        every axial slice predicted, ``batch_size`` slices per forward pass.

        ``known``: slice index -> the COCO results (dataset category ids, RLE masks) this model
        already gave on the same pixels (a run's test PNGs are ``display_pixels`` of the same
        volume, written losslessly): those slices are not run again, only decoded."""
        return self.predict_volumes(img_ras, prewindowed, (self.score_thresh,), desc, known)[0]

    def predict_volumes(self, img_ras: np.ndarray, prewindowed: bool, thresholds, desc: str | None = None,
                        known: dict[int, list[dict]] | None = None) -> list[np.ndarray]:
        """``predict_volume`` painted at each score threshold of ``thresholds`` from one pass of the
        model (the same detections, kept from each threshold up)."""
        thresholds = [float(t) for t in thresholds]
        known = known or {}
        nz = img_ras.shape[2]
        outs = [np.zeros(img_ras.shape, dtype=np.uint8) for _ in thresholds]
        for k, preds in known.items():
            for out, lab in zip(outs, self._labels_of_results(preds, img_ras.shape[1::-1], thresholds)):
                out[:, :, k] = undisplay_slice(lab)
        todo = [k for k in range(nz) if k not in known]
        if todo:
            self._run(img_ras, prewindowed, todo, outs, thresholds, desc)
        return outs

    def _labels_of_results(self, preds: list[dict], hw: tuple[int, int], thresholds: list[float]) -> list[np.ndarray]:
        from pycocotools import mask as mask_util

        preds = [p for p in preds if p["score"] >= min(thresholds)]  # decode only what counts
        if not preds:
            return [np.zeros(hw, np.uint8) for _ in thresholds]
        masks = np.stack([mask_util.decode(p["segmentation"]).astype(bool) for p in preds])
        labels = np.array([p["category_id"] for p in preds])
        scores = np.array([p["score"] for p in preds], float)
        return [labels_from_instances(masks, labels, scores, t) for t in thresholds]

    def _forward(self, inputs: list[dict]) -> list[dict]:
        from benchmark.engine import forward_or_one_by_one

        # as in the run's own inference: a batch can need more than training did
        return forward_or_one_by_one(self.model, inputs)[0]

    def _run(self, img_ras: np.ndarray, prewindowed: bool, todo: list[int], outs: list[np.ndarray],
             thresholds: list[float], desc: str | None) -> None:
        import torch
        from tqdm import tqdm

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), tqdm(total=len(todo), desc=desc or "slices", unit="slice", leave=False,
                                       disable=None) as bar:
                for start in range(0, len(todo), self.batch_size):
                    ks = todo[start:start + self.batch_size]
                    outputs = self._forward([self._input(img_ras, k, prewindowed) for k in ks])
                    for k, o in zip(ks, outputs):
                        inst = o["instances"].to("cpu")
                        masks, scores = inst.pred_masks.numpy(), inst.scores.numpy()
                        classes = LABEL_OF_CONTIGUOUS[inst.pred_classes.numpy()]
                        for out, t in zip(outs, thresholds):
                            out[:, :, k] = undisplay_slice(labels_from_instances(masks, classes, scores, t))
                    bar.update(len(ks))
        finally:
            self.model.train(was_training)


# --------------------------------------------------------------------------- a run folder


def _run_conversion(res: dict, run_dir: Path) -> dict:
    """The run's conversion settings: recorded in result.json, else its dataset's dataset.json
    (only while that dataset is still the one the run trained on). PredictError when they
    cannot be had, or when they orient slices otherwise than this lungbench does."""
    conv = res.get("conversion")
    if not isinstance(conv, dict):
        dataset_dir = (res.get("config") or {}).get("dataset_dir")
        try:
            manifest = read_dataset(Path(str(dataset_dir))).manifest
        except (DatasetError, KeyError, TypeError) as e:
            raise PredictError(run_dir / R.FILENAME, f"the run records no conversion settings and its "
                               f"dataset ({dataset_dir}) cannot tell them: {e}") from None
        trained_on = ((res.get("identity") or {}).get("dataset") or {}).get("config_hash")
        if trained_on and trained_on != manifest.get("config_hash"):
            raise PredictError(Path(str(dataset_dir)) / "dataset.json", f"rebuilt with another config "
                               f"({manifest.get('config_hash')}) since the run trained on it ({trained_on}): "
                               "its settings are not the run's. Train the run again with this lungbench "
                               "(its result.json then records them)")
        conv = conversion_settings(manifest)
    if conv.get("orientation") not in (None, ORIENTATION):
        raise PredictError(run_dir / R.FILENAME, "the run's slices were oriented otherwise than this "
                           f"lungbench orients them ({conv.get('orientation')}); predict with the version "
                           "that trained it, or train it again")
    return conv


def load_run(run_dir: str | Path, device: str = "auto", batch_size: int | None = None) -> tuple[Predictor, dict]:
    """The Predictor of a finished run kept with its model, and the run's result.json (with the
    ``conversion`` settings the predictor uses).

    PredictError (file and what to do) for a folder that is no finished lungbench run, or
    whose model was not kept."""
    run_dir = Path(run_dir).expanduser().resolve()
    try:
        found = R.read_result(run_dir) if run_dir.is_dir() else None
    except R.ResultUnreadable:
        found = None
    if found is None:
        raise PredictError(run_dir, "no readable result.json: not a lungbench run folder (pass RUN=<the RUN_DIR "
                           "of a finished run>)")
    res = found.data
    if res.get("status") != "ok":
        err = res.get("error") or {}
        raise PredictError(run_dir / R.FILENAME, f"the run did not finish (status {res.get('status')!r}: "
                           f"{err.get('message', 'no error recorded')}); run it again first")
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise PredictError(ckpt, "no trained model in this run folder: it was trained without "
                           "keep_checkpoint=true, and a finished run deletes its checkpoints. Train it "
                           "again keeping the model, e.g. `make train BACKBONE=... RUN_DIR=<new dir> "
                           "ARGS=keep_checkpoint=true` (or the same ARGS for `make sweep`)")
    conversion = _run_conversion(res, run_dir)
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from benchmark.config import resolve_device, resolve_infer_batch

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
    # the settings used, read once (from result.json or, for an older run, its dataset.json)
    return Predictor.from_model(model, d2cfg, conversion, thresh, bs), {**res, "conversion": conversion}


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


def check_headers(files: list[Path], max_voxels: int = MAX_VOXELS) -> None:
    """Cheap pre-pass on the headers: readable, what they claim (real numbers, at most
    ``max_voxels``, a usable slice size: converters.volume.check_claims), usable affine."""
    import nibabel as nib

    for p in files:
        try:
            img = nib.load(str(p))
        except Exception as e:  # nibabel raises several types for a bad header
            raise ConversionError(p, f"not a readable NIfTI file ({e})") from None
        check_affine(p, img.affine)
        check_claims(p, img.shape, img.get_data_dtype(), img.affine, case_id_from_name(p.name), max_voxels)


def read_input(path: Path, max_voxels: int = MAX_VOXELS):
    """(Volume, 3-D data as stored) of one input, checked like the converter checks images."""
    cid = case_id_from_name(path.name)
    vol = read_volume(path, max_voxels)
    data = squeeze_3d(vol, cid)
    check_finite(vol, data, cid)
    check_affine(path, vol.affine)
    return vol, data


def predict_file(predictor: Predictor, path: Path, max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, Any, np.ndarray]:
    """(labels in the input's voxel grid, the input Volume, voxel spacing in mm) of one file."""
    vol, data = read_input(path, max_voxels)
    img_ras, _, _ = canonical(data, vol.affine)
    pred = predictor.predict_volume(img_ras, is_prewindowed(data), desc=case_name(path))
    return from_canonical(pred, vol.affine), vol, spacing_of(vol.affine)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=VOLUME_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in VOLUME_COLUMNS})
    return buf.getvalue()


def predict(run_dir: str | Path, input_path: str | Path, out: str | Path, device: str = "auto",
            batch_size: int | None = None, max_voxels: int = MAX_VOXELS) -> Path:
    """Predict every input volume with the run's model into ``out`` (module doc); returns ``out``."""
    files = input_files(input_path)
    out = fsutil.resolve_output(out)
    src = Path(input_path).expanduser().resolve()
    if fsutil.overlaps(out, src if src.is_dir() else src.parent):
        raise PredictError(out, f"OUT and the folder of INPUT ({src if src.is_dir() else src.parent}) overlap: "
                           "lungbench never writes where it reads; choose another OUT")
    fsutil.check_owned(out, PRED_KIND, "OUT", replace=True)
    check_headers(files, max_voxels)
    with fsutil.output_lock(run_dir, "RUN (the run folder)", shared=True):  # not cleaned meanwhile
        return _predict_reading(run_dir, files, out, device, batch_size, max_voxels)


def _predict_reading(run_dir: str | Path, files: list[Path], out: Path, device: str,
                     batch_size: int | None, max_voxels: int) -> Path:
    import nibabel as nib
    from tqdm import tqdm

    from benchmark.volumes import save_atomic

    predictor, res = load_run(run_dir, device, batch_size)
    rows = []
    with fsutil.output_lock(out, "OUT"), fsutil.atomic_dir(out, PRED_KIND, "OUT") as tmp:
        for p in tqdm(files, desc=f"predict {res.get('backbone')}", unit="volume", disable=None):
            labels, vol, spacing = predict_file(predictor, p, max_voxels)
            cid = case_name(p)
            # the input's own header: its qform/sform (and codes) describe this grid exactly
            save_atomic(label_image(labels, vol.affine, like=nib.load(str(p))), tmp / f"{cid}.nii.gz")
            rows.append({"case": cid, "file": str(p.resolve()),
                         **volume_table(labels, spacing, voxel_mm3=abs(float(np.linalg.det(vol.affine[:3, :3]))))})
        fsutil.write_text(tmp / VOLUMES_CSV, _csv(rows))
        write_predictions(tmp, run_dir=str(Path(run_dir).resolve()), backbone=res.get("backbone"),
                          identity=(res.get("identity") or {}).get("hash"),
                          score_thresh=predictor.score_thresh, conversion=res["conversion"],
                          labels={str(c.label_value): c.name for c in CLASSES},
                          overlap_rule="infection over lung; between lungs the higher-scoring instance",
                          inputs=[r["file"] for r in rows])
    return out


# --------------------------------------------------------------------------- 3-D evaluation


def known_slices(test_coco: dict, predictions: list[dict]) -> dict[str, dict[int, list[dict]]]:
    """case -> slice index -> a run's COCO results on that test image (``Predictor.predict_volume``'s
    ``known``; masks stay RLE until a case is rebuilt)."""
    where = {im["id"]: (str(im["case_id"]), int(im["slice_index"])) for im in test_coco["images"]}
    out: dict[str, dict[int, list[dict]]] = {}
    for case, k in where.values():
        out.setdefault(case, {})[k] = []
    for p in predictions:
        case, k = where[p["image_id"]]
        out[case][k].append(p)
    return out


def evaluate_volumes(model, d2cfg, dataset_dir: str | Path, case_ids: list[str], score_thresh: float,
                     batch_size: int = 1, known: dict[str, dict[int, list[dict]]] | None = None
                     ) -> tuple[dict | None, list[str]]:
    """Dice and NSD per test case and class on the whole source volumes (every slice, also
    those the converter did not keep), predicted by ``Predictor`` (``known``: the slices the
    run's COCO evaluation already predicted, see ``known_slices``), on both lung definitions
    (benchmark.metrics3d), and the whole-lung Dice of the same detections painted from every
    score the model returned (``dice3d_all``). Returns (the ``metrics.volume3d`` section, notes);
    (None, [why]) when the source volumes the dataset was converted from are gone or changed."""
    from tqdm import tqdm

    from converters.case import load_verified

    dataset_dir = Path(dataset_dir)
    manifest = read_dataset(dataset_dir).manifest
    predictor = Predictor.from_model(model, d2cfg, conversion_settings(manifest), score_thresh, batch_size)
    raw_root = Path(str(manifest.get("raw_root")))
    records = {c["id"]: c for c in manifest.get("cases", [])}
    per_case: dict[str, dict] = {}
    for cid in tqdm(sorted(case_ids), desc="3-D metrics", unit="case", leave=False, disable=None):
        rec = records.get(cid)
        if rec is None:
            return None, [f"3-D metrics not computed: case {cid} is not in {dataset_dir / 'dataset.json'}"]
        files = {s["role"]: raw_root / s["path"] for s in rec["sources"]}
        gone = [p for p in files.values() if not p.is_file()]
        if gone:
            return None, [f"3-D metrics not computed: the source volume {gone[0]} is not there (they need "
                          "the raw folder the dataset was converted from)"]
        case = CaseFiles(cid, image=files["image"], combined=files.get("combined"), lung=files.get("lung"),
                         infection=files.get("infection"))
        try:
            image, img, masks, labels, _ = load_verified(case, manifest["config"])
        except ConversionError as e:  # a source that no longer reads: note it, keep the run
            return None, [f"3-D metrics not computed: {e}"]
        sha = {s["role"]: s["sha256"] for s in rec["sources"]}
        for role, v in [("image", image), *zip([r for r, _ in case.masks()], masks)]:
            if v.sha256 != sha.get(role):
                return None, [f"3-D metrics not computed: {v.path} changed since the dataset was converted "
                              "(sha256 differs); convert it again"]
        img_ras, aff_ras, _ = canonical(img, image.affine)
        gt_ras, _, _ = canonical(labels, image.affine)
        pred_ras, pred_all = predictor.predict_volumes(img_ras, is_prewindowed(img), (score_thresh, 0.0), desc=cid,
                                                       known=(known or {}).get(cid))
        per_case[cid] = volume_metrics(gt_ras, pred_ras, spacing_of(aff_ras), pred_all=pred_all)
    return {"per_case": per_case, "mean": summarize(per_case), "tolerance_mm": dict(TOLERANCE_MM),
            "n_cases": len(per_case), "slices": "every slice of each test volume",
            "lungs": "each lung with the infection nearer to it (as the release's Lung_Mask)",
            "lungs_labelled": "labels 1 and 2 as they are, without the infection (as the benchmark's "
                              "evaluation script scores Lung_and_Infection_Mask)",
            "score_thresh": float(score_thresh),
            # every detection the model returned: those at or above its test threshold, the ones AP ranks
            "score_thresh_all": float(d2cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)}, []


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmark.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished run dir trained with keep_checkpoint=true")
    ap.add_argument("--input", required=True, help="a NIfTI file (.nii/.nii.gz) or a folder of them")
    ap.add_argument("--out", required=True, help="output folder (new, empty, or an earlier OUT of make predict)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ap.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: the run's auto)")
    ap.add_argument("--max-voxels", type=int, default=MAX_VOXELS,
                    help=f"most voxels an input's header may claim (default {MAX_VOXELS:,}; checked before reading it)")
    a = ap.parse_args(argv)
    try:
        out = predict(a.run, a.input, a.out, a.device, a.batch_size, a.max_voxels)
    except (PredictError, ConversionError, fsutil.NotOwned, fsutil.OutputBusy, ConfigError) as e:
        print(f"error: {e}; nothing written.", file=sys.stderr)
        return 2
    except OSError as e:
        if (msg := fsutil.output_error(e)) is None:
            raise
        print(f"error: writing OUT {a.out}: {msg}", file=sys.stderr)
        return 1
    n = len(list(out.glob("*.nii.gz")))
    print(f"wrote {n} label volume(s), {VOLUMES_CSV} and {PREDICTIONS_FILE} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
