"""dataset.json: a converted dataset's manifest (writer: converters.convert; read here only).

``<dataset_dir>/dataset.json`` (written last, so its presence marks a finished conversion) says
what the folder holds: its schema version, the classes, the cases, the sources it was converted
from (path -> bytes, mtime, sha256) and in ``annotation_files`` the COCO file of every split
(``{scheme: [{"train": path, "test": path}, ...]}``, paths relative to the dataset). Runs and
sweeps find a split's file there, never by a naming convention, and check it first (nnU-Net's
verify_dataset_integrity in spirit): a known schema, lungbench's classes, the file listed and
present inside the dataset, and its images the split's members. Every problem is a DatasetError
naming the file, the problem and the command that rebuilds the dataset.

``read_dataset`` reads and checks the manifest once and returns a :class:`Dataset`, which the
run passes down; a split's COCO file is parsed once per Dataset (``Dataset.coco``).
Standard library only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.catalog import NAME_BY_ID
from contracts.fsutil import write_text

FILENAME = "dataset.json"
#: the schema converters.convert writes, and the ones this reader accepts
SCHEMA = 1
READABLE_SCHEMAS = (1,)
PARTS = ("train", "test")


class DatasetError(ValueError):
    """The converted dataset is missing a file or does not hold what a run needs."""


def write_manifest(dataset_dir: str | Path, manifest: dict) -> Path:
    """``<dataset_dir>/dataset.json`` (temp file, then rename). The converter writes it last,
    into the temp folder that then replaces the dataset."""
    return write_text(Path(dataset_dir) / FILENAME, json.dumps(manifest, indent=1))


def recorded_manifest(dataset_dir: str | Path) -> dict | None:
    """dataset.json as it is, unchecked, or None when there is none or it is unreadable: for
    the converter's up-to-date test only (anything it cannot use means: convert again)."""
    try:
        manifest = json.loads((Path(dataset_dir) / FILENAME).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None

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


def read_dataset(dataset_dir: str | Path) -> "Dataset":
    """``<dataset_dir>/dataset.json``, read once and checked: a known schema version and the
    classes of ``contracts.catalog`` (ids and names). DatasetError names the file and the
    problem."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / FILENAME
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
    dataset = Dataset(dataset_dir, manifest)
    schema = manifest.get("schema")
    if schema not in READABLE_SCHEMAS:
        raise DatasetError(f"{path}: schema {schema!r} is not one this lungbench reads "
                           f"(it reads {', '.join(map(str, READABLE_SCHEMAS))}); {dataset.rebuild_hint()}")
    classes = manifest.get("classes")
    try:
        got = {int(c["id"]): c["name"] for c in classes}
    except (TypeError, KeyError, ValueError):
        got = classes
    if got != NAME_BY_ID:
        raise DatasetError(f"{path}: classes {got} differ from lungbench's {NAME_BY_ID} "
                           f"(category id: name); {dataset.rebuild_hint()}")
    return dataset


def read_coco(json_file: Path) -> dict:
    """A COCO instances file of a converted dataset, checked: JSON, the three COCO sections,
    lungbench's categories, at least one image. DatasetError names the file."""
    if not json_file.is_file():
        raise DatasetError(f"{json_file}: no such annotation file")
    try:
        coco = json.loads(json_file.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_file}: not valid JSON ({e})") from e
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise DatasetError(f"{json_file}: not COCO instances JSON (no {key!r})")
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    if cats != NAME_BY_ID:
        raise DatasetError(f"{json_file}: categories {cats} differ from the contract {NAME_BY_ID}")
    if not coco["images"]:
        raise DatasetError(f"{json_file}: holds no images")
    return coco


def _image_key(file_name: str) -> str:
    """``<case_id>/<slice>.png`` -> ``<case_id>/<slice>``, the converter's slice key."""
    return file_name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Dataset:
    """A converted dataset: its folder and its checked dataset.json (``read_dataset``)."""

    dir: Path
    #: dataset.json as the converter wrote it (schema, classes, cases, sources, splits, ...)
    manifest: dict[str, Any] = field(repr=False)
    _coco: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def path(self) -> Path:
        return self.dir / FILENAME

    def rebuild_hint(self) -> str:
        """What to run to rebuild this dataset (the end of every DatasetError about it). Its
        dataset.json is intact, so the converter would call the folder up to date and skip it."""
        return (f"rebuild the dataset: delete {self.dir}, then {_convert_command(self.dir, self.manifest)}"
                " with the options it was built with")

    def name(self, override: str | None = None) -> str:
        """``override``, else dataset.json's ``name`` (or config.data.name), else the folder's."""
        if override:
            return str(override)
        data = (self.manifest.get("config") or {}).get("data")
        for cand in (self.manifest.get("name"), data.get("name") if isinstance(data, dict) else None):
            if isinstance(cand, str) and cand:
                return cand
        return self.dir.resolve().name

    def split_file(self, scheme: str, fold: int, part: str) -> Path:
        """The annotation file of one split, as ``annotation_files`` lists it; it must exist
        inside the dataset. DatasetError says which splits the dataset has."""
        if part not in PARTS:
            raise ValueError(f"part {part!r} not in {PARTS}")
        where, manifest = self.path, self.manifest
        files = manifest.get("annotation_files")
        if not isinstance(files, dict):
            raise DatasetError(f"{where}: no annotation_files listing the split files; {self.rebuild_hint()}")
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
                               f"{fold}; {self.rebuild_hint()}")
        root = self.dir.resolve()
        json_file = (root / rel).resolve()
        if not json_file.is_relative_to(root):
            raise DatasetError(f"{where}: annotation_files points outside the dataset ({rel}); "
                               f"{self.rebuild_hint()}")
        if not json_file.is_file():
            raise DatasetError(f"{json_file}: no such file, although {where} lists it as {scheme} "
                               f"fold {fold} {part}; {self.rebuild_hint()}")
        return json_file

    def coco(self, scheme: str, fold: int, part: str) -> dict:
        """The split's COCO file (``read_coco``), checked against the split's members; parsed
        once per Dataset."""
        key = (scheme, int(fold), part)
        if key not in self._coco:
            json_file = self.split_file(scheme, fold, part)
            try:
                coco = read_coco(json_file)
            except DatasetError as e:  # unreadable, not COCO, other categories, no images
                raise DatasetError(f"{e}; {self.rebuild_hint()}") from e
            self._check_members(json_file, coco, scheme, int(fold), part)
            self._coco[key] = coco
        return self._coco[key]

    def _check_members(self, json_file: Path, coco: dict, scheme: str, fold: int, part: str) -> None:
        """The file holds the images dataset.json's ``splits`` says the split has. The manifest
        records no per-file image count: the count comes from the split's members (slice keys,
        or case ids with each case's ``n_images`` in ``cases``)."""
        where, manifest = self.path, self.manifest
        try:
            split = manifest["splits"][scheme]
            members = split["folds"][fold][part]
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
                               f"{self.rebuild_hint()}") from None
        got = len(coco["images"])
        if got != want:
            raise DatasetError(f"{json_file}: {got} images, but {where} says {scheme} fold {fold} "
                               f"{part} has {want}; {self.rebuild_hint()}")
        foreign = sorted({str(key(im)) for im in coco["images"]} - {str(m) for m in members})
        if foreign:
            raise DatasetError(f"{json_file}: holds images of {len(foreign)} {unit}(s) that "
                               f"{where} does not put in {scheme} fold {fold} {part} (e.g. "
                               f"{foreign[0]}); {self.rebuild_hint()}")

    def fingerprint(self, scheme: str, fold: int) -> dict:
        """What a run's data are: the conversion's config hash, the sha256 of the split's train
        and test annotation files and one sha256 over the sha256 of every source volume."""
        out = {"config_hash": self.manifest.get("config_hash")}
        for part in PARTS:
            out[f"{part}_sha256"] = hashlib.sha256(self.split_file(scheme, fold, part).read_bytes()).hexdigest()
        sources = {path: rec.get("sha256") for path, rec in (self.manifest.get("sources") or {}).items()}
        out["sources_sha256"] = hashlib.sha256(
            json.dumps(sources, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return out


def fingerprint(dataset_dir: str | Path, scheme: str, fold: int) -> dict | None:
    """``Dataset.fingerprint`` of the dataset at ``dataset_dir`` as it is now, or None when it
    cannot be read (a run then fails at its dataset check with the reason)."""
    try:
        return read_dataset(dataset_dir).fingerprint(scheme, int(fold))
    except (OSError, ValueError, TypeError):  # DatasetError is a ValueError
        return None
