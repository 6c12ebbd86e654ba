"""NIfTI CT volumes + lung/infection masks -> COCO instance segmentation dataset.

CLI (Hydra app over conf/convert.yaml)::

    python -m converters.convert data=phantom out=work/data/phantom
    python -m converters.convert data=covid19_ct_seg data.root=<raw dir> out=<dir>

Python::

    from converters.convert import convert
    convert(raw_root, out_dir, {"slices": {"keep": "all"}})   # -> out_dir

Output (docs/dataset.md): ``images/<case_id>/<slice:04d>.png``,
``annotations/all.json``, ``annotations/<scheme>_f<k>_{train,test}.json``, ``dataset.json``.
The dataset is built in ``<out>.tmp-<pid>`` and renamed into place when complete; a re-run
with the same sources and config does nothing; a changed config rebuilds.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from contracts import dataset as dataset_contract
from contracts import fsutil
from contracts.errors import ConfigError
from contracts.fsutil import (NotOwned, check_owned, output_lock, overlaps, remove_stale_temps,
                              replace_dir, resolve_output, seal, sha256_file)

from . import phantom
from .case import run_case, windows_of
from .config import config_hash, load_config, validate
from .errors import ConversionError
from .instances import CATEGORIES, CLASSES
from .layout import Discovery, discover
from .splits import SLICE_RANDOM_WARNING, build_splits
from .volume import ORIENTATION, PREWINDOW_HU, check_headers, relative

CONVERTER_VERSION = 1
log = logging.getLogger("converters")


# ---------------------------------------------------------------- up-to-date check
def candidate_files(disc: Discovery) -> list[Path]:
    """Every NIfTI file the result depends on: used cases and bad (skipped) ones."""
    files = {p for c in disc.cases for _, p in c.files()}
    files |= {Path(e.path) for e in disc.bad}
    return sorted(files)


def is_up_to_date(out: Path, chash: str, disc: Discovery, files: list[Path]) -> bool:
    """True when ``out`` was built from the same config and the same source bytes.

    Sources are compared by size + mtime first and by sha256 only when those differ,
    so an unchanged dataset is recognised without reading the volumes.
    """
    manifest = dataset_contract.recorded_manifest(out)
    if manifest is None or manifest.get("config_hash") != chash:
        return False
    recorded = manifest.get("sources") or {}
    current = {relative(p, disc.root): p for p in files}
    if set(recorded) != set(current):
        return False
    for rel, p in current.items():
        rec, st = recorded[rel], p.stat()
        if st.st_size != rec.get("bytes"):
            return False
        if st.st_mtime_ns != rec.get("mtime_ns") and sha256_file(p) != rec.get("sha256"):
            return False
    return True


# ---------------------------------------------------------------- output location
DATASET_KIND = "dataset"


def check_locations(raw_root: Path, out: Path) -> None:
    """The converter reads ``raw_root`` and replaces ``out``: they must not overlap (the
    source would be written into, or deleted with the old dataset)."""
    if overlaps(raw_root, out):
        raise ConversionError(out, f"the output folder and the raw folder {raw_root} overlap; "
                              "lungbench never writes into a folder it reads: choose an out "
                              "outside the raw data")


def make_temp_dir(out: Path, chash: str) -> Path:
    """A marked temp folder next to ``out`` with images/ and annotations/; refused (NotOwned)
    when ``out`` is not a folder lungbench may rebuild; any I/O failure is a ConversionError."""
    check_owned(out, DATASET_KIND, "DATA_OUT (out=)", replace=True)
    remove_stale_temps(out)
    tmp = None
    try:
        tmp = fsutil.make_temp_dir(out, DATASET_KIND, chash)
        (tmp / "images").mkdir()
        (tmp / "annotations").mkdir()
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise ConversionError(out.parent, f"output folder is not writable: "
                              f"{e.strerror or e}") from None
    return tmp


# ---------------------------------------------------------------- checking the cases
def check_fold_count(raw_root: Path, c: dict, n_cases: int, cases: str = "cases") -> None:
    """patient_kfold needs a test case per fold: refuse a k above the ``n_cases`` cases."""
    k = c["splits"]["patient_kfold"]["k"]
    if c["splits"]["patient_kfold"]["enabled"] and k > n_cases:
        raise ConversionError(raw_root, f"splits.patient_kfold.k={k} exceeds the number of "
                              f"{cases} ({n_cases}): lower k")


def bad_cases_error(errors: list[ConversionError]) -> ConversionError:
    """One error for all bad cases: the first one's file and problem, the others named."""
    first = errors[0]
    more = ""
    if len(errors) > 1:
        others = ", ".join(e.case_id or e.path for e in errors[1:])
        more = f" (+{len(errors) - 1} more bad case(s): {others})"
    return ConversionError(first.path, f"{first.problem}{more}; fix the input or pass "
                           "on_bad_case=skip to leave bad cases out", case_id=first.case_id)


def check_cases(disc: Discovery, c: dict) -> None:
    """The header pre-pass: a case whose shape, dimensions or affines are wrong moves to
    ``disc.bad`` before any voxel is read. With on_bad_case=fail any bad case fails here,
    before any work is done; so does having no usable case (always) or fewer cases than folds."""
    for case in list(disc.cases):
        try:
            check_headers(case.image, [p for _, p in case.masks()],
                          float(c["verify"]["affine_atol"]), case.case_id,
                          int(c["verify"]["max_voxels"]))
        except ConversionError as e:
            disc.bad.append(e)
            disc.cases.remove(case)
    disc.bad.sort(key=lambda e: e.case_id or "")
    fail = c["on_bad_case"] == "fail"
    if disc.bad and fail:
        raise bad_cases_error(disc.bad)
    if not disc.cases:
        raise ConversionError(disc.root, "no usable case found")
    if fail:
        check_fold_count(disc.root, c, len(disc.cases))


# ---------------------------------------------------------------- running the cases
def pool_context():
    """fork where the OS has it: workers start in milliseconds and re-import nothing
    (spawn/forkserver re-run the parent's __main__ in every worker: pytest, Hydra...).
    The worker function lives in an importable module, so spawn works too."""
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def run_cases(disc: Discovery, c: dict, images_dir: Path,
              workers: int) -> tuple[list[dict], list[ConversionError]]:
    """Convert every case (pool of ``workers`` processes; 1 = in this process); returns the
    results and the bad cases (pre-pass and workers), by case id. on_bad_case=fail: a bad
    case fails the conversion (the first stops the pool); skip: it is logged, its PNGs removed."""
    fail = c["on_bad_case"] == "fail"
    results, errors = [], list(disc.bad)
    cases = disc.cases
    bar = None

    def take(r: dict) -> bool:
        bar.update(1)
        if "error" in r:
            errors.append(r["error"])
            return fail
        results.append(r)
        return False

    try:
        if workers <= 1 or len(cases) <= 1:
            bar = tqdm(total=len(cases), desc="convert", unit="case", disable=None)
            for case in cases:
                if take(run_case(case, str(disc.root), c, str(images_dir))):
                    break
        else:
            with ProcessPoolExecutor(min(workers, len(cases)), mp_context=pool_context()) as ex:
                futs = [ex.submit(run_case, case, str(disc.root), c, str(images_dir))
                        for case in cases]
                # the bar's monitor thread starts only now, after the workers were forked
                bar = tqdm(total=len(cases), desc="convert", unit="case", disable=None)
                for fut in as_completed(futs):
                    if take(fut.result()):
                        for f in futs:
                            f.cancel()
                        break
    finally:
        if bar is not None:
            bar.close()
    errors.sort(key=lambda e: e.case_id or "")
    if errors and fail:
        raise bad_cases_error(errors)
    for e in errors:
        log.warning("skipped case %s: %s: %s", e.case_id, e.path, e.problem)
        shutil.rmtree(images_dir / str(e.case_id), ignore_errors=True)
    if not results:
        raise ConversionError(disc.root, "no usable case left after skipping bad cases")
    check_fold_count(disc.root, c, len(results), "cases left after skipping bad cases")
    return sorted(results, key=lambda r: r["case_id"]), errors


# ---------------------------------------------------------------- COCO assembly
def write_coco(path: Path, info: dict, images: list[dict], anns: list[dict]) -> None:
    """One COCO file, compact (no spaces)."""
    with open(path, "w") as f:
        json.dump({"info": info, "licenses": [], "categories": CATEGORIES, "images": images,
                   "annotations": anns}, f, separators=(",", ":"))


def assemble(results: list[dict]) -> tuple[list[dict], list[dict]]:
    """COCO images and annotations with ids assigned once, in sorted (case, slice) order."""
    images, anns = [], []
    flat = sorted((im for r in results for im in r["images"]),
                  key=lambda im: (im["case_id"], im["slice_index"]))
    for image_id, im in enumerate(flat, start=1):
        images.append({"id": image_id, "file_name": im["file_name"], "height": im["height"],
                       "width": im["width"], "case_id": im["case_id"],
                       "slice_index": im["slice_index"]})
        for a in im["annotations"]:
            anns.append({"id": len(anns) + 1, "image_id": image_id, **a})
    return images, anns


def write_coco_files(ann_dir: Path, splits: dict, images: list[dict], anns: list[dict],
                     base_info: dict) -> dict:
    """``all.json`` and its ``<scheme>_f<k>_{train,test}.json`` subsets; returns their names
    (dataset.json's ``annotation_files``)."""
    write_coco(ann_dir / "all.json", {**base_info, "split": "all"}, images, anns)
    by_image: dict[int, list[dict]] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    names: dict[str, list[dict]] = {}
    for scheme, s in splits.items():
        names[scheme] = []
        for k, fold in enumerate(s["folds"]):
            entry = {}
            for part in ("train", "test"):
                members = set(fold[part])  # case ids, or slices' file names less .png
                sel = [im for im in images
                       if (im["case_id"] if s["unit"] == "case" else im["file_name"][:-4]) in members]
                sel_anns = [a for im in sel for a in by_image.get(im["id"], [])]
                info = {**base_info, "split": scheme, "fold": k, "part": part, "unit": s["unit"]}
                if scheme == "slice_random":
                    info["warning"] = SLICE_RANDOM_WARNING
                name = f"{scheme}_f{k}_{part}.json"
                write_coco(ann_dir / name, info, sel, sel_anns)
                entry[part] = f"annotations/{name}"
            names[scheme].append(entry)
    return {"all": "annotations/all.json", **names}


# ---------------------------------------------------------------- dataset.json
def source_records(results: list[dict], files: list[Path], raw_root: Path) -> dict:
    """sha256, size and mtime of every source, by path under ``raw_root``: the workers hashed
    what they read; the rest (bad cases' files) are hashed here."""
    sources = {s["path"]: {k: s[k] for k in ("sha256", "bytes", "mtime_ns")}
               for r in results for s in r["record"]["sources"]}
    for p in files:
        rel = relative(p, raw_root)
        if rel not in sources:
            st = p.stat()
            sources[rel] = {"sha256": sha256_file(p), "bytes": st.st_size,
                            "mtime_ns": st.st_mtime_ns}
    return dict(sorted(sources.items()))


def dataset_manifest(c: dict, chash: str, disc: Discovery, results: list[dict],
                     errors: list[ConversionError], images: list[dict], anns: list[dict],
                     splits: tuple[dict, dict], files: dict, sources: dict, stats: dict) -> dict:
    """dataset.json's content (docs/dataset.md): the settings it was built with (``c``, the
    resolved config), the splits ``(splits, omitted)``, what was converted and skipped."""
    sizes = {(im["height"], im["width"]) for im in images}
    return {
        "schema": dataset_contract.SCHEMA,
        "name": c["data"].get("name"),
        "converter_version": CONVERTER_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "raw_root": str(disc.root),
        "layout": disc.layout,
        "classes": CLASSES,
        "window": {
            "channels": [{"name": n, "hu": list(w)} for n, w in zip(
                list(c["windows"]) if c["multiwindow"] else ["lung"], windows_of(c))],
            "image_mode": "RGB" if c["multiwindow"] else "L",
            "prewindowed_rule": "volumes whose values all lie in 0..255 are taken as "
                                f"already windowed to {list(PREWINDOW_HU)} HU (Radiopaedia) "
                                "and kept as they are for that window",
        },
        "orientation": ORIENTATION,
        "slices": dict(c["slices"]),
        "instances": {"infection": dict(c["infection"]),
                      "segmentation": "polygon" if c["polygons"] else "rle",
                      "note": "one instance per lung, one per connected infection "
                              "component per slice; lung instances exclude infection "
                              "pixels (label 3 overrides the lung label)"},
        "splits": splits[0],
        "splits_omitted": splits[1],
        "annotation_files": files,
        "n_cases": len(results),
        "n_images": len(images),
        "n_annotations": len(anns),
        "image_size": list(sizes.pop()) if len(sizes) == 1 else None,
        "cases": [r["record"] for r in results],
        "skipped": [e.as_record() for e in errors],
        "ignored": disc.ignored,
        "sources": sources,
        "config": c,
        "config_hash": chash,
        "stats": stats,
    }


# ---------------------------------------------------------------- the conversion
def convert(raw_root: str | Path, out_dir: str | Path, cfg: Any = None) -> Path:
    """Convert the raw folder ``raw_root`` into the COCO dataset ``out_dir``; return it.

    ``cfg``: dict or DictConfig with the keys of conf/convert.yaml (missing keys take
    their defaults, composed by Hydra from conf/; ``out`` and ``data.root`` are ignored
    here). Raises ConfigError (a ValueError naming the key) on a bad option value and
    ConversionError (file + problem) on bad input; nothing is written to ``out_dir`` then.
    """
    return _convert(raw_root, out_dir, load_config(cfg))


def _convert(raw_root: str | Path, out_dir: str | Path, cfg: DictConfig) -> Path:
    """``convert`` with ``cfg`` already complete (composed)."""
    t0 = time.perf_counter()
    c = OmegaConf.to_container(cfg, resolve=True)
    validate(c)
    raw_root = resolve_output(raw_root)
    out = resolve_output(out_dir)  # a symlinked output is written through, never replaced
    check_locations(raw_root, out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConversionError(out.parent, f"cannot create the output folder: "
                              f"{e.strerror or e}") from None
    with output_lock(out, "DATA_OUT (out=)"):
        return _convert_locked(raw_root, out, cfg, c, t0)


def _convert_locked(raw_root: Path, out: Path, cfg: DictConfig, c: dict, t0: float) -> Path:
    disc = discover(raw_root, c["layout"])
    for ig in disc.ignored:
        log.info("ignored %s: %s", ig["file"], ig["reason"])
    chash = config_hash(cfg, CONVERTER_VERSION)
    all_files = candidate_files(disc)  # before bad cases are dropped below
    if is_up_to_date(out, chash, disc, all_files):
        log.info("up to date: %s (same config hash %s and source files)", out, chash)
        return out
    check_cases(disc, c)
    tmp = make_temp_dir(out, chash)
    try:
        workers = int(c["workers"] or os.cpu_count() or 1)
        results, errors = run_cases(disc, c, tmp / "images", workers)
        images, anns = assemble(results)
        splits = build_splits([r["case_id"] for r in results],
                              [im["file_name"][:-4] for im in images], c)
        info = {"description": f"lungbench COCO dataset from {raw_root.name}",
                "converter_version": CONVERTER_VERSION, "config_hash": chash}
        files = write_coco_files(tmp / "annotations", splits[0], images, anns, info)
        sources = source_records(results, all_files, raw_root)
        wall = time.perf_counter() - t0
        stats = {"wall_s": round(wall, 3), "workers": workers,
                 "slices_per_s": round(len(images) / wall, 2) if wall > 0 else None}
        dataset_contract.write_manifest(tmp, dataset_manifest(  # written last: marks completeness
            c, chash, disc, results, errors, images, anns, splits, files, sources, stats))
        seal(tmp, DATASET_KIND, chash)
        replace_dir(tmp, out, DATASET_KIND, "DATA_OUT (out=)")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s: %d cases, %d images, %d annotations (%.1f s)", out, len(results),
             len(images), len(anns), wall)
    return out


def run(cfg: DictConfig) -> Path:
    """The CLI's work: generate the phantom when the data config asks, then convert.

    ``cfg`` is a complete converter config (the Hydra app's, or ``config.load_config``'s).
    Options are checked first (ConfigError), then every output before anything is written:
    the dataset folder first, then the phantom's raw folder (``<out>/../raw/<out's name>``:
    lungbench's own, and that dataset's alone, so two phantoms in one folder never share their
    volumes; data.root is for real data).
    """
    validate(OmegaConf.to_container(cfg, resolve=True))  # before generating anything
    out = resolve_output(cfg.out)
    root = cfg.data.get("root")
    gen = cfg.data.get("generate")
    if gen and root:
        raise ConversionError("data.root", f"data={cfg.data.name} generates its own raw volumes; "
                              f"data.root={root} is for real data: drop DATA_ROOT to use the "
                              "phantom, or pass DATA=covid19_ct_seg to convert that folder")
    if not gen and not root:
        raise ConversionError("data.root", "not set: pass data.root=<raw data folder> "
                              "(make data DATA_ROOT=<dir>)")
    params = OmegaConf.to_container(gen, resolve=True) if gen else None
    if params:  # unknown presets / parameters: a ConfigError before anything is written
        phantom.spec_for(**{k: v for k, v in params.items() if k != "seed"})  # seed: generate's
    check_owned(out, DATASET_KIND, "DATA_OUT (out=)", replace=True)
    if params:
        root = out.parent / "raw" / out.name
        check_locations(root, out)
        log.info("phantom: generating %s into %s", params, root)
        phantom.generate(root, **params)
    return _convert(root, out, cfg)


def _hydra_main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path="../conf", config_name="convert")
    def main(cfg: DictConfig) -> None:
        try:
            out = run(cfg)
        except (ConversionError, NotOwned, fsutil.OutputBusy) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except OSError as e:
            if (msg := fsutil.output_error(e)) is None:
                raise
            print(f"error: writing DATA_OUT {cfg.out}: {msg}", file=sys.stderr)
            sys.exit(1)
        except ConfigError as e:  # a bad option value (validate) or phantom parameter
            print(f"error: config: {e}", file=sys.stderr)
            sys.exit(2)
        print(out)

    main()


if __name__ == "__main__":
    _hydra_main()
