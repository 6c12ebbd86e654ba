"""The converted dataset's manifest, read and checked (standard library only).

``<dataset_dir>/dataset.json`` (written last by converters.convert) says what the folder holds:
its schema version, the classes, and in ``annotation_files`` the COCO file of every split.
Runs and sweeps find a split's file there, never by a naming convention, and check it first
(nnU-Net's verify_dataset_integrity in spirit): a known schema, lungbench's classes, the file
listed and present inside the dataset, and its images the split's members. Every problem is a
DatasetError naming the file, the problem and the command that rebuilds the dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

from converters.catalog import NAME_BY_ID

PARTS = ("train", "test")


class DatasetError(ValueError):
    """The converted dataset is missing a file or does not hold what a run needs."""


MANIFEST = "dataset.json"
#: dataset.json schema versions this loader reads (converters.convert writes ``SCHEMA``)
MANIFEST_SCHEMAS = (1,)


def _convert_command(dataset_dir: Path, manifest: dict | None = None) -> str:
    """The command that (re)builds ``dataset_dir``, from what its manifest says it was."""
    data = ((manifest or {}).get("config") or {}).get("data")
    data = data if isinstance(data, dict) else {}
    name = data.get("name") or (manifest or {}).get("name") or "<data>"
    if manifest is None:
        return (f"make data DATA_OUT={dataset_dir} (the phantom), or make data DATA_ROOT=<raw dir> "
                f"DATA_OUT={dataset_dir} (python -m converters.convert [data=covid19_ct_seg "
                f"data.root=<raw dir>] out={dataset_dir})")
    if data.get("generate"):  # the phantom makes its own raw data
        return (f"make data DATA={name} DATA_OUT={dataset_dir} "
                f"(python -m converters.convert data={name} out={dataset_dir})")
    root = data.get("root") or manifest.get("raw_root") or "<raw dir>"
    return (f"make data DATA={name} DATA_ROOT={root} DATA_OUT={dataset_dir} "
            f"(python -m converters.convert data={name} data.root={root} out={dataset_dir})")


def _rebuild(dataset_dir: Path, manifest: dict) -> str:
    # dataset.json is intact, so the converter would call the folder up to date and skip it
    return (f"rebuild the dataset: delete {dataset_dir}, then {_convert_command(dataset_dir, manifest)}"
            " with the options it was built with")


def read_manifest(dataset_dir: str | Path) -> dict:
    """``<dataset_dir>/dataset.json``, checked: a known schema version and the classes of
    ``converters.catalog`` (ids and names). DatasetError names the file and the problem."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / MANIFEST
    if not dataset_dir.is_dir():
        raise DatasetError(f"{dataset_dir}: no such folder (dataset_dir= must be a converted "
                           f"dataset; convert one: {_convert_command(dataset_dir)})")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file: {dataset_dir} is not a converted dataset, or its "
                           "conversion did not finish (the converter writes dataset.json last); "
                           f"convert it: {_convert_command(dataset_dir)}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: unreadable ({e}); convert it again: "
                           f"{_convert_command(dataset_dir)}") from e
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: not a dataset manifest (a JSON object); convert it again: "
                           f"{_convert_command(dataset_dir)}")
    schema = manifest.get("schema")
    if schema not in MANIFEST_SCHEMAS:
        raise DatasetError(f"{path}: schema {schema!r} is not one this lungbench reads "
                           f"(it reads {', '.join(map(str, MANIFEST_SCHEMAS))}); {_rebuild(dataset_dir, manifest)}")
    classes = manifest.get("classes")
    try:
        got = {int(c["id"]): c["name"] for c in classes}
    except (TypeError, KeyError, ValueError):
        got = classes
    if got != NAME_BY_ID:
        raise DatasetError(f"{path}: classes {got} differ from lungbench's {NAME_BY_ID} "
                           f"(category id: name); {_rebuild(dataset_dir, manifest)}")
    return manifest


def split_file(dataset_dir: str | Path, scheme: str, fold: int, part: str,
               manifest: dict | None = None) -> Path:
    """The annotation file of one split, as dataset.json's ``annotation_files`` lists it
    (``{scheme: [{"train": path, "test": path}, ...]}``, paths relative to the dataset); it
    must exist inside the dataset. DatasetError says which splits the dataset has."""
    if part not in PARTS:
        raise ValueError(f"part {part!r} not in {PARTS}")
    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir) if manifest is None else manifest
    where = dataset_dir / MANIFEST
    files = manifest.get("annotation_files")
    if not isinstance(files, dict):
        raise DatasetError(f"{where}: no annotation_files listing the split files; "
                           f"{_rebuild(dataset_dir, manifest)}")
    schemes = sorted(k for k, v in files.items() if isinstance(v, list))
    folds = files.get(scheme)
    if not isinstance(folds, list):
        omitted = (manifest.get("splits_omitted") or {}).get(scheme)
        why = f" ({omitted})" if omitted else ""
        raise DatasetError(f"{where}: no split scheme {scheme!r} in annotation_files{why}; "
                           f"this dataset has: {', '.join(schemes) or 'none'} (split=...)")
    if not 0 <= int(fold) < len(folds):
        raise DatasetError(f"{where}: {scheme} has folds 0..{len(folds) - 1}, not fold {fold} "
                           "(split.fold=...)")
    entry = folds[int(fold)]
    rel = entry.get(part) if isinstance(entry, dict) else None
    if not isinstance(rel, str) or not rel:
        raise DatasetError(f"{where}: annotation_files lists no {part} file for {scheme} fold "
                           f"{fold}; {_rebuild(dataset_dir, manifest)}")
    root = dataset_dir.resolve()
    json_file = (root / rel).resolve()
    if not json_file.is_relative_to(root):
        raise DatasetError(f"{where}: annotation_files points outside the dataset ({rel}); "
                           f"{_rebuild(dataset_dir, manifest)}")
    if not json_file.is_file():
        raise DatasetError(f"{json_file}: no such file, although {where} lists it as {scheme} "
                           f"fold {fold} {part}; {_rebuild(dataset_dir, manifest)}")
    return json_file


def _image_key(file_name: str) -> str:
    """``<case_id>/<slice>.png`` -> ``<case_id>/<slice>``, the converter's slice key."""
    return file_name.rsplit(".", 1)[0]


def _check_members(json_file: Path, coco: dict, manifest: dict, scheme: str, fold: int,
                   part: str, dataset_dir: Path) -> None:
    """The file holds the images dataset.json's ``splits`` says the split has. The manifest
    records no per-file image count: the count comes from the split's members (slice keys,
    or case ids with each case's ``n_images`` in ``cases``)."""
    where = dataset_dir / MANIFEST
    try:
        split = manifest["splits"][scheme]
        members = split["folds"][int(fold)][part]
        unit = split["unit"]
        if unit == "slice":
            want, key = len(members), (lambda im: _image_key(im["file_name"]))
        elif unit == "case":
            per_case = {c["id"]: int(c["n_images"]) for c in manifest["cases"]}
            want, key = sum(per_case[m] for m in members), (lambda im: im.get("case_id"))
        else:
            raise KeyError(unit)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise DatasetError(f"{where}: does not record the members of {scheme} fold {fold} "
                           f"{part} (splits / cases: {type(e).__name__} {e}); "
                           f"{_rebuild(dataset_dir, manifest)}") from None
    got = len(coco["images"])
    if got != want:
        raise DatasetError(f"{json_file}: {got} images, but {where} says {scheme} fold {fold} "
                           f"{part} has {want}; {_rebuild(dataset_dir, manifest)}")
    foreign = sorted({str(key(im)) for im in coco["images"]} - {str(m) for m in members})
    if foreign:
        raise DatasetError(f"{json_file}: holds images of {len(foreign)} {unit}(s) that "
                           f"{where} does not put in {scheme} fold {fold} {part} (e.g. "
                           f"{foreign[0]}); {_rebuild(dataset_dir, manifest)}")


def _read_coco(json_file: Path) -> dict:
    if not json_file.is_file():  # register_split checks the manifest's files first
        raise DatasetError(f"{json_file}: no such annotation file")
    try:
        coco = json.loads(json_file.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_file}: not valid JSON ({e})") from e
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise DatasetError(f"{json_file}: not COCO instances JSON (no {key!r})")
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    want = NAME_BY_ID
    if cats != want:
        raise DatasetError(f"{json_file}: categories {cats} differ from the contract {want}")
    if not coco["images"]:
        raise DatasetError(f"{json_file}: holds no images")
    return coco


