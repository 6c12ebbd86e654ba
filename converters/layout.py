"""Find the cases in a raw folder: detect the layout, pair each image with its masks.

Two layouts of the public release exist (see ``converters/covid19_ct_seg.json``):

* Zenodo: ``COVID-19-CT-Seg_20cases/<id>.nii.gz`` plus ``Lung_and_Infection_Mask/<id>.nii.gz``
  (labels 1 left lung, 2 right lung, 3 infection) or ``Lung_Mask/`` (1, 2) +
  ``Infection_Mask/`` (1 = infection); images and masks share names.
* Kaggle: ``ct_scans/coronacases_org_001.nii`` (``_org_`` image names, uncompressed),
  ``lung_and_infection_mask/``, ``lung_mask/``, ``infection_mask/`` with ``coronacases_001.nii``,
  plus ``metadata.csv``.

The folders may sit a few levels below the root (archives unpack into a subfolder).
Pairing is by normalised case id, never by position. Every file not used is reported
with the reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConversionError
from contracts.fsutil import LOCK_TAG, MARKER

# lower-cased folder name -> role
ROLE_DIRS = {
    "covid-19-ct-seg_20cases": "image",
    "ct_scans": "image",
    "lung_and_infection_mask": "combined",
    "lung_mask": "lung",
    "infection_mask": "infection",
}
LAYOUT_IMAGE_DIR = {"zenodo": "covid-19-ct-seg_20cases", "kaggle": "ct_scans"}
MAX_DEPTH = 3
MASK_ROLES = ("combined", "lung", "infection")


def case_id_from_name(name: str) -> str | None:
    """``coronacases_org_001.nii`` -> ``coronacases_001``; None if not a NIfTI name.

    The normalising rule of the public mirrors: ``_org_covid-19-pneumonia-`` -> ``_``,
    ``-dcm`` -> ``''``, ``_org_`` -> ``_`` (idempotent on Zenodo names).
    """
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            stem = name[: -len(ext)]
            break
    else:
        return None
    stem = stem.replace("_org_covid-19-pneumonia-", "_").replace("-dcm", "").replace("_org_", "_")
    return stem or None


@dataclass
class CaseFiles:
    """The files of one case. ``combined`` or both ``lung`` and ``infection`` are set."""

    case_id: str
    image: Path
    combined: Path | None = None
    lung: Path | None = None
    infection: Path | None = None

    def masks(self) -> list[tuple[str, Path]]:
        if self.combined is not None:
            return [("combined", self.combined)]
        return [(r, p) for r, p in (("lung", self.lung), ("infection", self.infection)) if p]

    def files(self) -> list[tuple[str, Path]]:
        return [("image", self.image)] + self.masks()


@dataclass
class Discovery:
    root: Path
    layout: str
    cases: list[CaseFiles] = field(default_factory=list)
    bad: list[ConversionError] = field(default_factory=list)  # per-case problems
    ignored: list[dict] = field(default_factory=list)  # {file, reason}


def _find_role_dirs(root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    base_depth = len(root.parts)
    for dirpath, dirnames, _ in os.walk(root):
        d = Path(dirpath)
        if len(d.parts) - base_depth >= MAX_DEPTH:
            dirnames[:] = []
        dirnames.sort()
        for name in dirnames:
            role = ROLE_DIRS.get(name.lower())
            if role:
                found.setdefault(name.lower(), []).append(d / name)
    return found


def discover(root: str | Path, layout: str = "auto") -> Discovery:
    """Pair image and mask files under ``root``; ``layout``: auto, zenodo or kaggle.

    Raises ConversionError for problems with the folder as a whole (missing, no known
    layout, ambiguous layout). Problems of single cases (missing mask, duplicate case
    id) go to ``Discovery.bad`` so ``on_bad_case=skip`` can drop just those.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConversionError(root, "raw data folder does not exist (or is not a folder)")
    layout, used_dirs = choose_layout(root, layout, _find_role_dirs(root))
    disc = Discovery(root=root, layout=layout)
    pair_cases(disc, list_files(root, used_dirs, disc.ignored), used_dirs)
    return disc


def choose_layout(root: Path, layout: str, dirs: dict[str, list[Path]]) -> tuple[str, dict[str, Path]]:
    """The layout (``auto``: the one whose image folder is there) and its folder per role;
    refused when its image folder is missing, with auto when both are there, and when a
    folder name appears twice."""
    if layout == "auto":
        present = [k for k, d in LAYOUT_IMAGE_DIR.items() if d in dirs]
        if not present:
            raise ConversionError(
                root, "no known layout: expected a COVID-19-CT-Seg_20cases/ (Zenodo) or "
                "ct_scans/ (Kaggle) folder of CT volumes")
        if len(present) > 1:
            raise ConversionError(
                root, "both Zenodo (COVID-19-CT-Seg_20cases/) and Kaggle (ct_scans/) folders "
                "found; choose one with layout=zenodo or layout=kaggle")
        layout = present[0]
    elif LAYOUT_IMAGE_DIR[layout] not in dirs:
        raise ConversionError(root, f"layout={layout} but no {LAYOUT_IMAGE_DIR[layout]}/ folder "
                              f"found (case-insensitive, up to {MAX_DEPTH} levels deep)")
    for paths in dirs.values():
        if len(paths) > 1:
            raise ConversionError(paths[1], f"a second {paths[0].name}/ folder (the first is "
                                  f"{paths[0]}); keep one copy of the data under {root}")
    other_image_dir = [d for k, d in LAYOUT_IMAGE_DIR.items() if k != layout][0]
    return layout, {ROLE_DIRS[k]: v[0] for k, v in dirs.items() if k != other_image_dir}


def list_files(root: Path, used_dirs: dict[str, Path], ignored: list[dict]) -> dict[str, dict[str, list[Path]]]:
    """role -> case id -> its NIfTI files in the role's folder. Every other file goes to
    ``ignored`` with the reason: first the data folders' other files, then those outside them
    (metadata.csv, archives, stamps, the other layout; not lungbench's own bookkeeping)."""
    by_role: dict[str, dict[str, list[Path]]] = {}
    for role, d in used_dirs.items():
        for p in sorted(d.iterdir()):
            if p.is_dir():
                ignored.append({"file": str(p), "reason": "sub-folder inside a data folder"})
                continue
            cid = case_id_from_name(p.name)
            if cid is None:
                ignored.append({"file": str(p), "reason": "not a NIfTI file (.nii or .nii.gz)"})
                continue
            by_role.setdefault(role, {}).setdefault(cid, []).append(p)
    data_dirs = set(used_dirs.values())
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if d in data_dirs or any(parent in data_dirs for parent in d.parents):
            dirnames[:] = []
            continue
        for fn in sorted(filenames):
            if fn == MARKER or fn.endswith(LOCK_TAG):
                continue
            reason = "outside the image/mask folders"
            if fn.lower() == "metadata.csv":
                reason = "Kaggle index file; cases are paired by file name instead"
            ignored.append({"file": str(d / fn), "reason": reason})
    return by_role


def _duplicate(cid: str, files: list[Path]) -> ConversionError:
    return ConversionError(files[1], f"duplicate case id {cid!r}: also {files[0].name} in the "
                           "same folder", case_id=cid)


def pair_case(cid: str, images: list[Path], masks: dict[str, dict[str, list[Path]]],
              used_dirs: dict[str, Path]) -> CaseFiles:
    """The files of case ``cid`` from its ``images`` and the ``masks`` (role -> case id ->
    files); ConversionError for a duplicate case id or a missing mask."""
    if len(images) > 1:
        raise _duplicate(cid, images)
    cf = CaseFiles(case_id=cid, image=images[0])
    problem = None
    for role in MASK_ROLES:
        cands = masks[role].get(cid, [])
        if len(cands) > 1:
            problem = _duplicate(cid, cands)
        elif cands:
            setattr(cf, role, cands[0])
    if problem is not None:
        raise problem
    if cf.lung is None and cf.infection is None and cf.combined is None:
        want = [f"{used_dirs['combined'].name}/"] if "combined" in used_dirs else []
        where = " or ".join(want + ["Lung_Mask/ + Infection_Mask/"])
        raise ConversionError(images[0], f"missing mask file: no {cid}.nii[.gz] in {where}",
                              case_id=cid)
    if cf.combined is None and (cf.lung is None or cf.infection is None):
        missing, present = ("infection", "lung") if cf.infection is None else ("lung", "infection")
        raise ConversionError(images[0], f"missing mask file: {missing} mask for {cid} "
                              f"not found (the {present} mask exists)", case_id=cid)
    return cf


def pair_cases(disc: Discovery, by_role: dict[str, dict[str, list[Path]]],
               used_dirs: dict[str, Path]) -> None:
    """Fill ``disc.cases`` (and ``disc.bad``) from the files by role and case id. A combined
    mask wins over separate ones (same labels); a mask without an image is ignored."""
    images = by_role.get("image", {})
    masks = {r: by_role.get(r, {}) for r in MASK_ROLES}
    for cid in sorted(images):
        try:
            cf = pair_case(cid, images[cid], masks, used_dirs)
        except ConversionError as e:
            disc.bad.append(e)
            continue
        if cf.combined is not None:
            for role in ("lung", "infection"):
                p = getattr(cf, role)
                if p is not None:
                    disc.ignored.append({"file": str(p), "reason": f"{cf.combined.parent.name}/"
                                         f"{cf.combined.name} used instead (same labels)"})
                    setattr(cf, role, None)
        disc.cases.append(cf)
    for per_case in masks.values():
        for cid, files in sorted(per_case.items()):
            if cid not in images:
                for p in files:
                    disc.ignored.append({"file": str(p), "reason": f"mask without an image "
                                         f"(no {cid} in {used_dirs['image'].name}/)"})
