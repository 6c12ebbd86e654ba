"""Synthetic sweeps for tests and perf: result.json files (schema 1, or 2 with a run identity)
with the artifacts a report reads (detectron2 metrics.json log, COCO predictions, a tiny COCO
test set), in a folder marked as a lungbench sweep, optionally with a sweep.json plan.

Numbers are deterministic pseudo-random functions of (backbone, schedule, fold, seed): they
exercise the report, they are not results. Run dirs get opaque names (``run_000``...) on
purpose: the report must read everything from result.json.
"""

from __future__ import annotations

import json
import zlib
from functools import cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from contracts import sweep
from contracts.catalog import BACKBONES, CLASS_NAMES, conf_name
from contracts.fsutil import claim
from contracts.identity import identity

#: The backbone configs runs are made from (their ``in_zoo`` goes into every result.json).
BACKBONE_CONF = Path(__file__).resolve().parents[1] / "conf" / "backbone"

#: A rough quality order so synthetic plots look like something (FPN > DC5 > C4, bigger trunk better).
_HEAD_BONUS = {"C4": -6.0, "DC5": -3.0, "FPN": 0.0}
_TRUNK_BONUS = {"R50": 0.0, "R101": 2.0, "X101": 3.0}
_PARAMS_M = {"R50": 44.0, "R101": 63.0, "X101": 107.0}
_S_PER_ITER = {"C4": 0.55, "DC5": 0.47, "FPN": 0.26}


def _rng(*key: Any) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("|".join(map(str, key)).encode()))


@cache
def in_zoo(backbone: str) -> bool | None:
    """``in_zoo`` of ``conf/backbone/<cell>.yaml``, as a real run records it; None (unknown)
    for a backbone without a config file."""
    path = BACKBONE_CONF / f"{conf_name(backbone)}.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    value = OmegaConf.load(path).get("in_zoo")
    return None if value is None else bool(value)


def _ap_block(rng: np.random.Generator, base: float) -> dict[str, Any]:
    per_class = {}
    for c, off in zip(CLASS_NAMES, (12.0, 13.0, -8.0)):
        ap = float(np.clip(base + off + rng.normal(0, 1.5), 0, 100))
        per_class[c] = {"AP": round(ap, 3), "AP50": round(min(100.0, ap + 20), 3), "AP75": round(ap * 0.9, 3)}
    ap = float(np.mean([v["AP"] for v in per_class.values()]))
    return {"AP": round(ap, 3), "AP50": round(min(100.0, ap + 20), 3), "AP75": round(ap * 0.9, 3),
            "APs": None, "APm": round(ap * 0.5, 3), "APl": round(ap * 1.05, 3), "per_class": per_class}


def make_result(backbone: str = "R50-FPN", *, schedule: str | None = "3x", fold: int = 0, seed: int = 0,
                status: str = "ok", schema: int | None = 1, solver: str = "smoke", weights: str = "zoo",
                experiment: str | None = "grid9", dataset_dir: str | None = None,
                test_annotations: str | None = None, error: dict[str, Any] | None = None,
                cases: Iterable[str] = ("phantom_000", "phantom_001"), base_lr: float = 0.00025) -> dict[str, Any]:
    """One result.json dict (schema 1 layout). ``status='failed'`` gives null metrics/timing and
    an error (``error`` or a default FloatingPointError). ``schema=2`` adds the run identity
    (from the config; no dataset fingerprint), 3 and 4 also the 3-D metrics; any other value
    only changes the schema field. ``base_lr`` is a config value (not the numbers).
    ``in_zoo`` is the backbone config's (``in_zoo()``), as a real run writes it."""
    trunk, head = backbone.split("-", 1)
    rng = _rng(backbone, schedule, fold, seed)
    base = 55.0 + _HEAD_BONUS.get(head, 0) + _TRUNK_BONUS.get(trunk, 0) + (2.0 if schedule == "3x" else 0.0)
    ok = status == "ok"
    cases = list(cases)
    metrics = timing = None
    if ok:
        dice = {case: {c: round(float(np.clip(0.8 + rng.normal(0, 0.05) - (0.3 if c == "infection" else 0), 0, 1)), 4)
                       for c in CLASS_NAMES} for case in cases}
        burden = {case: round(float(abs(rng.normal(2, 1))), 3) for case in cases}
        metrics = {
            "segm": _ap_block(rng, base), "bbox": _ap_block(rng, base + 3),
            "dice": {"per_case": dice, "mean": {c: round(float(np.mean([d[c] for d in dice.values()])), 4) for c in CLASS_NAMES}},
            "infection_burden_abs_error": {"per_case": burden, "mean": round(float(np.mean(list(burden.values()))), 3)},
        }
        timing = {"train_s_per_iter": round(_S_PER_ITER.get(head, 0.4) * (1 + 0.4 * _TRUNK_BONUS.get(trunk, 0) / 3) * rng.uniform(0.95, 1.05), 4),
                  "infer_s_per_image": round(_S_PER_ITER.get(head, 0.4) / 5 * rng.uniform(0.9, 1.1), 4),
                  "train_wall_s": 80.0, "eval_wall_s": 6.0}
    elif error is None:
        error = {"type": "FloatingPointError", "message": "Loss became infinite or NaN at iteration=1!",
                 "where": "train iter 1", "traceback": "Traceback (most recent call last):\n  ...\nFloatingPointError"}
    ds_dir = dataset_dir or "/abs/converted"
    config = {"backbone": {"trunk": trunk, "head": head}, "solver": {"name": solver, "base_lr": base_lr},
              "seed": seed, "split": {"name": "patient_kfold", "fold": fold}}
    out = {
        "schema": schema, "status": status, "error": None if ok else error,
        "backbone": backbone, "trunk": trunk, "head": head, "in_zoo": in_zoo(backbone),
        "schedule": schedule, "weights": weights, "experiment": experiment,
        "solver": {"name": solver, "ims_per_batch": 2, "base_lr": base_lr,
                   "max_iter": 20 if solver == "smoke" else 5000, "lr_schedule": "paper", "amp": False},
        "dataset": {"name": "phantom", "dir": ds_dir, "split": "patient_kfold", "fold": fold,
                    "n_train_images": 12, "n_test_images": 4, "image_size": [64, 64]},
        "seed": seed, "metrics": metrics, "timing": timing,
        "memory": {"peak_gpu_mb": None, "peak_rss_mb": round(1500 + 10 * _PARAMS_M.get(trunk, 50), 1)} if ok else None,
        "model": {"params_m": _PARAMS_M.get(trunk, 50.0) + (1.5 if head == "FPN" else 0.0), "gflops": 35.2},
        "env": {"device": "cpu", "torch": "2.14.1", "detectron2": "0.6+lb1", "python": "3.11.7",
                "git_sha": "4b2826b", "hostname": "synthetic"},
        "artifacts": {"predictions": "d2/inference/coco_instances_results.json", "metrics_log": "d2/metrics.json",
                      "dataset_dir": ds_dir,
                      "test_annotations": test_annotations or f"{ds_dir}/annotations/patient_kfold_f{fold}_test.json"},
        "config": config,
        "started_at": "2026-11-29T10:00:00+00:00", "finished_at": "2026-11-29T10:02:00+00:00",
    }
    if schema in (2, 3, 4):
        out["identity"] = identity(config, None)
    if schema in (3, 4):
        out["conversion"] = {"window": [-1250, 250], "multiwindow": False, "windows": {}, "orientation": None}
        if ok:
            set_volume3d(out, {case: {c: round(0.85 * d[c], 4) for c in CLASS_NAMES} for case, d in dice.items()})
    return out


def set_volume3d(result: dict[str, Any], dice3d: dict[str, dict[str, float]],
                 nsd3d: dict[str, dict[str, float]] | None = None, labelled: bool = True,
                 dice3d_all: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Give an ok result 3-D numbers as a real run writes them (``metrics.volume3d`` and each
    case's ``dice3d``/``nsd3d`` in ``metrics.per_case``); ``nsd3d`` defaults to 0.9 x Dice.
    ``labelled``: also the lungs as labelled (schema 4: ``dice3d_labelled``/``nsd3d_labelled``,
    0.95 x the whole lungs' numbers, infection the same) and ``dice3d_all`` (default: ``dice3d``)."""
    nsd3d = nsd3d or {case: {c: round(0.9 * v, 4) for c, v in d.items()} for case, d in dice3d.items()}
    per_case = {case: {"dice3d": dict(dice3d[case]), "nsd3d": dict(nsd3d.get(case, {}))} for case in dice3d}
    if labelled:
        for case, v in per_case.items():
            for key in ("dice3d", "nsd3d"):
                v[f"{key}_labelled"] = {c: x if c == "infection" else round(0.95 * x, 4) for c, x in v[key].items()}
            v["dice3d_all"] = dict((dice3d_all or dice3d)[case])
    keys = [k for k in ("dice3d", "nsd3d", "dice3d_labelled", "nsd3d_labelled", "dice3d_all")
            if all(k in v for v in per_case.values())]
    mean = {m: {c: float(np.mean([v[m][c] for v in per_case.values()])) for c in CLASS_NAMES} for m in keys}
    m = result["metrics"]
    m["volume3d"] = {"per_case": per_case, "mean": mean, "n_cases": len(per_case),
                     "tolerance_mm": {"left_lung": 1.0, "right_lung": 1.0, "infection": 3.0},
                     "score_thresh": 0.5, **({"score_thresh_all": 0.05} if labelled else {})}
    for case, v in per_case.items():
        m.setdefault("per_case", {}).setdefault(case, {}).update(v)
    return result


def set_per_case(result: dict[str, Any], segm_ap: dict[str, dict[str, float | None]],
                 dice: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Give an ok result per-case numbers (``metrics.per_case``, as a run's evaluation
    writes it): ``segm_ap`` {case: {class: AP}}, ``dice`` likewise (default 0.8 each). The
    run-level segm AP per class becomes the mean over the cases, so both views agree."""
    dice = dice or {case: {c: 0.8 for c in CLASS_NAMES} for case in segm_ap}
    m = result["metrics"]
    old = m.get("per_case") or {}
    keep = ("dice3d", "nsd3d", "dice3d_labelled", "nsd3d_labelled", "dice3d_all", "fp_no_gt", "fp_no_gt_any")
    m["per_case"] = {case: {**{k: v for k, v in old.get(case, {}).items() if k in keep},
                            "segm_AP": dict(segm_ap[case]), "dice": dict(dice.get(case, {}))} for case in segm_ap}
    for c in CLASS_NAMES:
        vals = [v[c] for v in segm_ap.values() if v.get(c) is not None]
        if vals:
            m["segm"]["per_class"][c]["AP"] = round(float(np.mean(vals)), 6)
    m["segm"]["AP"] = round(float(np.mean([m["segm"]["per_class"][c]["AP"] for c in CLASS_NAMES])), 6)
    m["dice"]["per_case"] = {case: dict(v) for case, v in dice.items()}
    return result


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def write_dataset(out: Path, n_images: int = 6, size: int = 64) -> tuple[Path, Path]:
    """A tiny COCO test set (PNG slices + RLE annotations): returns (dataset_dir, test annotations).

    Image i has two lungs and ``i % 4`` infection blobs of growing size, so the slices with
    the most infection are well defined."""
    from PIL import Image
    from pycocotools import mask as mask_util

    out = Path(out)
    (out / "images" / "case_000").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        h = w = size
        body = _ellipse(h, w, h / 2, w / 2, h * 0.45, w * 0.47)
        # Radiological display: the patient's right lung is on the image left.
        right = _ellipse(h, w, h * 0.5, w * 0.3, h * 0.3, w * 0.15)
        left = _ellipse(h, w, h * 0.5, w * 0.7, h * 0.3, w * 0.15)
        inst = [(1, left), (2, right)]
        for k in range(i % 4):
            cy, cx = h * (0.4 + 0.1 * k), (w * 0.3 if k % 2 else w * 0.7)
            r = 2 + i % 5 + k
            inst.append((3, _ellipse(h, w, cy, cx, r, r) & (left | right)))
        img = np.where(body, 120, 10).astype(np.uint8)
        img[left | right] = 40
        for _, m in inst[2:]:
            img[m] = 170
        name = f"case_000/{i:04d}.png"
        Image.fromarray(img, mode="L").save(out / "images" / name)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w, "case_id": "case_000", "slice_index": i})
        for cat, m in inst:
            if not m.any():
                continue
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "segmentation": rle,
                         "area": int(m.sum()), "bbox": [float(v) for v in mask_util.toBbox(rle)], "iscrowd": 0})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": c} for k, c in enumerate(CLASS_NAMES)]}
    test = out / "annotations" / "patient_kfold_f0_test.json"
    test.write_text(json.dumps(coco))
    return out, test


def write_artifacts(run_dir: Path, result: dict[str, Any], n_iter: int = 20) -> None:
    """detectron2-like metrics.json (JSON lines) and COCO predictions (GT masks shifted a little)."""
    from pycocotools import mask as mask_util

    from reports.overlays import decode

    run_dir = Path(run_dir)
    rng = _rng("artifacts", result["backbone"], result.get("schedule"), result["dataset"]["fold"], result["seed"])
    log = run_dir / result["artifacts"]["metrics_log"]
    log.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for it in range(0, n_iter, max(1, n_iter // 20)):
        decay = np.exp(-it / max(1, n_iter / 3))
        parts = {k: float(v * (0.3 + decay) * rng.uniform(0.9, 1.1)) for k, v in
                 {"loss_cls": 0.6, "loss_box_reg": 0.5, "loss_mask": 0.7, "loss_rpn_cls": 0.2, "loss_rpn_loc": 0.1}.items()}
        lines.append(json.dumps({"iteration": it, "total_loss": sum(parts.values()), **parts, "lr": 0.00025}))
    lines.append(json.dumps({"iteration": n_iter - 1, "segm/AP": 1.0}))  # an eval line: no total_loss
    log.write_text("\n".join(lines) + "\n")

    ann_path = Path(result["artifacts"]["test_annotations"])
    preds = []
    if ann_path.is_file():
        coco = json.loads(ann_path.read_text())
        for a in coco["annotations"]:
            m = decode(a["segmentation"]).astype(np.uint8)
            dy, dx = rng.integers(-2, 3, size=2)
            m = np.roll(np.roll(m, dy, 0), dx, 1)
            rle = mask_util.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode()
            preds.append({"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": rle,
                          "bbox": [float(v) for v in mask_util.toBbox(rle)],
                          "score": round(float(rng.uniform(0.55, 0.99)), 3)})
    pred_path = run_dir / result["artifacts"]["predictions"]
    pred_path.parent.mkdir(parents=True, exist_ok=True)
    pred_path.write_text(json.dumps(preds))


def write_run(run_dir: Path, result: dict[str, Any], artifacts: bool = True) -> Path:
    """Write result.json (and, for ok runs, its artifacts) into ``run_dir``; returns the result path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if artifacts and result.get("status") == "ok":
        write_artifacts(run_dir, result)
    path = run_dir / "result.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def mark_sweep(sweep_dir: Path) -> Path:
    """Make ``sweep_dir`` a lungbench sweep folder (its owner marker), as `make sweep` does."""
    return claim(sweep_dir, sweep.KIND, "SWEEP_DIR")


def write_plan(sweep_dir: Path, runs: Iterable[tuple[str, dict[str, Any] | None]]) -> Path:
    """``<sweep_dir>/sweep.json`` as a sweep writes it (contracts.sweep), planning ``runs``:
    (run folder relative to the sweep dir, the result expected there or None; whether it is
    written there is the caller's choice). The planned identity, group, backbone and in_zoo are
    the expected result's (identity: its own, else computed from its config)."""
    planned = []
    for run_dir, result in runs:
        ident = (result or {}).get("identity") or (identity(result["config"], None) if result else {})
        planned.append({"label": Path(run_dir).name, "run_dir": str(run_dir), "overrides": [],
                        "status": "planned", "error": None, "identity": ident.get("hash"),
                        "group": ident.get("group"), "backbone": (result or {}).get("backbone"),
                        "in_zoo": (result or {}).get("in_zoo")})
    return sweep.write_plan(Path(sweep_dir).resolve(), planned, overrides=[], hydra_exit_code=None,
                            summary=f"{len(planned)} runs")


def write_sweep(sweep_dir: Path, dataset_dir: Path | None = None, *, backbones: Iterable[str] = BACKBONES,
                folds: Iterable[int] = (0,), seeds: Iterable[int] = (0,), schedule: str | None = "3x",
                failed: Iterable[str] = (), solver: str = "smoke", artifacts: bool = True,
                n_runs: int | None = None, plan: bool = False) -> list[Path]:
    """A sweep of synthetic runs in opaque dirs ``run_000``...; returns the result.json paths.
    The folder is marked as a lungbench sweep; ``plan``: with a sweep.json planning these runs.

    ``failed``: backbones whose runs fail. ``n_runs``: stop after that many runs (cycling over
    folds beyond ``folds`` if needed, for perf). Every run's test set is the one of ``dataset_dir``
    (created with :func:`write_dataset` when given as a path that does not exist yet)."""
    sweep_dir = Path(sweep_dir)
    mark_sweep(sweep_dir)
    test_ann = None
    if dataset_dir is not None:
        ann = Path(dataset_dir) / "annotations" / "patient_kfold_f0_test.json"
        test_ann = ann if ann.is_file() else write_dataset(Path(dataset_dir))[1]
    backbones, folds, seeds, failed = list(backbones), list(folds), list(seeds), set(failed)
    combos = [(f, s, b) for f in folds for s in seeds for b in backbones]
    if n_runs is not None:
        extra = max(folds, default=-1) + 1
        while len(combos) < n_runs:
            combos += [(extra, s, b) for s in seeds for b in backbones]
            extra += 1
        combos = combos[:n_runs]
    paths, planned = [], []
    for i, (f, s, b) in enumerate(combos):
        r = make_result(b, schedule=schedule, fold=f, seed=s, solver=solver,
                        status="failed" if b in failed else "ok",
                        dataset_dir=str(dataset_dir) if dataset_dir else None,
                        test_annotations=str(test_ann) if test_ann else None)
        paths.append(write_run(sweep_dir / f"run_{i:03d}", r, artifacts=artifacts))
        planned.append((f"run_{i:03d}", r))
    if plan:
        write_plan(sweep_dir, planned)
    return paths
