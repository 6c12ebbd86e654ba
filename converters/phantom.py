"""Synthetic chest CT phantom, written as NIfTI in the Zenodo layout of COVID-19-CT-Seg.

It lets the whole harness run offline: a body outline in HU (fat, soft tissue, spine, ribs,
heart), two lungs (air around -850 HU with texture and vessels) and ground-glass infection
blobs (around -500 HU) that favour lower, posterior and peripheral lung. Masks use the
dataset's label values: 1 left lung, 2 right lung, 3 infection (the *patient's* left and
right; infection overrides the lung label, as in ``Lung_and_Infection_Mask``).

Geometry is built in the canonical RAS+ voxel frame (index i grows towards the patient's
right, j towards anterior, k towards superior) and then stored in the axis order and
directions of ``axcodes`` (default ``LPS``, what ITK-written clinical NIfTI usually look
like), with the matching affine, so the converter's orientation handling is exercised.

Seeded and deterministic: the same ``(preset, seed, overrides)`` gives the same bytes.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy import ndimage

from contracts.errors import ConfigError
from contracts.fsutil import atomic_dir, output_lock, resolve_output

GENERATOR_VERSION = 1
IMAGE_DIR = "COVID-19-CT-Seg_20cases"
COMBINED_DIR = "Lung_and_Infection_Mask"
LUNG_DIR = "Lung_Mask"
INFECTION_DIR = "Infection_Mask"
STAMP = "phantom.json"


@dataclass(frozen=True)
class PhantomSpec:
    """Size and appearance of the generated cases.

    n_cases: number of cases (ids ``phantom_000``...). size: in-plane voxels (square).
    slices: axial slices. fov_mm: in-plane field of view (spacing = fov_mm / size).
    z_extent_mm: cranio-caudal coverage (slice spacing = z_extent_mm / slices).
    axcodes: storage orientation (nibabel axis codes, e.g. "LPS", "RAS", "PIR").
    blobs: (min, max) infection blobs per case. blob_mm: (min, max) semi-axis of a blob (mm).
    noise_hu: Gaussian noise std in HU.
    mask_layout: "combined" (Lung_and_Infection_Mask), "separate" (Lung_Mask +
    Infection_Mask) or "both". n_windowed: the last n cases are stored already windowed
    to the lung window and rescaled to 0..255, like the Radiopaedia cases.
    """

    n_cases: int
    size: int
    slices: int
    fov_mm: float = 360.0
    z_extent_mm: float = 300.0
    axcodes: str = "LPS"
    blobs: tuple[int, int] = (2, 5)
    blob_mm: tuple[float, float] = (12.0, 40.0)
    noise_hu: float = 15.0
    mask_layout: str = "combined"
    n_windowed: int = 0


PRESETS: dict[str, PhantomSpec] = {
    # tests: a few seconds end to end (5 cases -> 5 patient folds with one test case each)
    "tiny": PhantomSpec(n_cases=5, size=64, slices=14),
    # make demo: nine trainings on a 2-core CPU (measured time: docs/demo.md). 20 cases (as
    # many as the real dataset) of 10 slices: a 2-fold split tests 10 cases, so a backbone better on every
    # case is significant against 8 others (one-sided Wilcoxon exact p = 1/1024, x8 for Holm); with
    # 5 cases no difference could be (p >= 1/32 before Holm's x8). Blobs of 20-50 mm semi-axes (the tiny preset's
    # 12-40 mm make infection of a few pixels at 3.75 mm/px): measured, R50-FPN after 300
    # iterations predicted 8x8 px infection boxes that never reached IoU 0.5 (infection AP 0);
    # with these it reaches infection AP 6.
    "default": PhantomSpec(n_cases=20, size=96, slices=10, blobs=(4, 8), blob_mm=(20.0, 50.0)),
}


def spec_for(preset: str = "tiny", **overrides) -> PhantomSpec:
    """The spec of ``preset`` with ``overrides``; ConfigError naming an unknown preset or
    parameter, or a bad mask_layout."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown phantom preset {preset!r}; choose from {sorted(PRESETS)}")
    for key in ("blobs", "blob_mm"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    unknown = set(overrides) - {f.name for f in dataclasses.fields(PhantomSpec)}
    if unknown:
        raise ConfigError(f"unknown phantom parameter(s): {sorted(unknown)}")
    spec = dataclasses.replace(PRESETS[preset], **overrides)
    if spec.mask_layout not in ("combined", "separate", "both"):
        raise ConfigError(f"mask_layout must be combined|separate|both, not {spec.mask_layout!r}")
    return spec


def make_case(spec: PhantomSpec, seed: int,
              index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One case in the canonical RAS+ frame.

    Returns ``(hu, labels, whole_lungs, affine)``: ``hu`` float32 (X, Y, Z) in HU,
    ``labels`` uint8 (X, Y, Z) with 0 background, 1 left lung, 2 right lung, 3 infection
    (infection overrides the lung label), ``whole_lungs`` the same without infection
    (infected voxels keep their lung's label), and the 4x4 RAS+ affine (mm).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    X = Y = spec.size
    Z = spec.slices
    sx, sz = spec.fov_mm / X, spec.z_extent_mm / Z  # mm per voxel: in-plane, along z
    # Normalised coordinates: u in [-1, 1] (patient left -> right), v in [-1, 1]
    # (posterior -> anterior), w in [0, 1] (inferior -> superior).
    u = np.linspace(-1, 1, X, dtype=np.float32)[:, None, None]
    v = np.linspace(-1, 1, Y, dtype=np.float32)[None, :, None]
    w = ((np.arange(Z, dtype=np.float32) + 0.5) / Z)[None, None, :]
    jitter = lambda s: float(rng.uniform(1 - s, 1 + s))  # noqa: E731  (anatomical variation)
    hu, heart = _body(u, v, w, jitter)
    labels, lungs, rn2 = _lungs(u, v, w, heart, jitter)
    tex, vessels = _parenchyma(hu, lungs, rng)
    infection = _infection(spec, lungs, rn2, v, w, rng)
    whole_lungs = labels.copy()  # 1/2 only: what Lung_Mask holds
    ggo = infection & ~vessels  # vessels stay visible through ground glass
    hu[ggo] = -500.0 + 1.2 * tex[ggo]
    labels[infection] = 3

    hu += rng.normal(0.0, spec.noise_hu, size=hu.shape).astype(np.float32)
    np.clip(hu, -1024, 3071, out=hu)

    affine = np.diag([sx, sx, sz, 1.0])
    affine[:3, 3] = [-(X - 1) / 2 * sx, -(Y - 1) / 2 * sx - 40.0, -(Z - 1) / 2 * sz - 150.0]
    return hu, labels, whole_lungs, affine


def _body(u: np.ndarray, v: np.ndarray, w: np.ndarray,
          jitter: Callable[[float], float]) -> tuple[np.ndarray, np.ndarray]:
    """HU of the body outside the lungs (fat, muscle, ribs, spine, heart) and the heart's
    mask, over the normalised coordinates; ``jitter(s)``: a random factor in [1 - s, 1 + s]."""
    shape = (u.shape[0], v.shape[1], w.shape[2])
    body_a, body_b = 0.92 * jitter(0.04), 0.68 * jitter(0.06)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body_r2 = (u / body_a) ** 2 + (v / body_b) ** 2
    hu[np.broadcast_to(body_r2 <= 1.0, shape)] = -90.0  # subcutaneous fat
    hu[np.broadcast_to(body_r2 <= 0.88**2, shape)] = 45.0  # muscle
    # ribs: bright arcs in a ring, only in some slices (they run obliquely)
    angle = np.arctan2(v, u)
    ring = (body_r2 > 0.80**2) & (body_r2 <= 0.86**2) & (np.sin(angle * 14) > 0.55)
    rib_slices = np.sin(w * shape[2] * 1.3) > 0.2
    hu[np.broadcast_to(ring & rib_slices, shape)] = 450.0
    # spine (posterior, midline) and heart (anterior, slightly to the patient's left)
    spine = ((u / 0.13) ** 2 + ((v + 0.50) / 0.15) ** 2) <= 1.0
    hu[np.broadcast_to(spine, shape)] = 650.0
    heart = (((u + 0.12) / 0.30) ** 2 + ((v - 0.22) / 0.26) ** 2 <= 1.0) & (w > 0.22) & (w < 0.62)
    hu[np.broadcast_to(heart, shape)] = 40.0
    return hu, heart


def _lungs(u: np.ndarray, v: np.ndarray, w: np.ndarray, heart: np.ndarray,
           jitter: Callable[[float], float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two lungs around the heart: (labels uint8 1 left / 2 right, lung mask, each lung
    voxel's normalised in-plane radius squared, 0 outside)."""
    shape = (u.shape[0], v.shape[1], w.shape[2])
    labels = np.zeros(shape, dtype=np.uint8)
    lungs = np.zeros(shape, dtype=bool)
    rn2_all = np.zeros(shape, dtype=np.float32)
    # left lung: u < 0 (patient's left); the right lung is a bit larger, its dome higher
    for label, uc, a, base in ((1, -0.42, 0.29, 0.14), (2, 0.42, 0.31, 0.20)):
        uc, a = uc * jitter(0.03), a * jitter(0.05)
        vc, b = 0.03, 0.45 * jitter(0.05)
        apex = 0.94
        rn2 = ((u - uc) / a) ** 2 + ((v - vc) / b) ** 2
        t = np.clip((w - base) / (apex - base), 0, 1)
        taper = np.sqrt(np.clip(1 - t**6, 0, 1))  # narrows to the apex
        dome = base + 0.16 * (1 - np.clip(rn2, 0, 1))  # diaphragm dome: periphery goes lowest
        lung = (rn2 <= taper**2) & (w >= dome) & (w <= apex) & ~heart
        labels[lung] = label
        lungs |= lung
        rn2_all = np.where(lung, np.broadcast_to(rn2, shape), rn2_all)
    return labels, lungs, rn2_all


def _parenchyma(hu: np.ndarray, lungs: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fill the lungs of ``hu``: air with smooth texture, plus a vessel network (tubes where
    two smooth random fields are both near zero). Returns (texture in HU, vessel mask)."""
    tex = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), 1.2)
    tex *= 25.0 / max(float(tex.std()), 1e-6)
    f1 = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), 2.0)
    f2 = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), 2.0)
    e1, e2 = 0.12 * f1.std(), 0.12 * f2.std()
    vessels = (np.abs(f1) < e1) & (np.abs(f2) < e2)
    hu[lungs] = -850.0 + tex[lungs]
    hu[lungs & vessels] = 30.0 + tex[lungs & vessels]
    return tex, vessels


def _infection(spec: PhantomSpec, lungs: np.ndarray, rn2: np.ndarray, v: np.ndarray,
               w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The infection mask: ground-glass blobs; centres drawn from lung voxels, weighted
    towards lower (w small), posterior (v small) and peripheral (``rn2`` large) lung."""
    sx, sz = spec.fov_mm / spec.size, spec.z_extent_mm / spec.slices
    lx, ly, lz = np.nonzero(lungs)
    n_blobs = int(rng.integers(spec.blobs[0], spec.blobs[1] + 1))
    infection = np.zeros(lungs.shape, dtype=bool)
    if len(lx) and n_blobs:
        wt = (np.exp(-2.5 * w[0, 0, lz]) * np.exp(-1.2 * (v[0, ly, 0] + 1))
              * (0.15 + rn2[lx, ly, lz]))
        wt = wt / wt.sum()
        rough = ndimage.gaussian_filter(rng.standard_normal(lungs.shape).astype(np.float32), 1.5)
        rough /= max(float(rough.std()), 1e-6)
        xmm = (np.arange(lungs.shape[0], dtype=np.float32) * sx)[:, None, None]
        ymm = (np.arange(lungs.shape[1], dtype=np.float32) * sx)[None, :, None]
        zmm = (np.arange(lungs.shape[2], dtype=np.float32) * sz)[None, None, :]
        for c in rng.choice(len(lx), size=n_blobs, p=wt):
            r = rng.uniform(*spec.blob_mm, size=3)  # semi-axes in mm
            d2 = (((xmm - lx[c] * sx) / r[0]) ** 2 + ((ymm - ly[c] * sx) / r[1]) ** 2
                  + ((zmm - lz[c] * sz) / r[2]) ** 2)
            infection |= (d2 + 0.25 * rough) <= 1.0
        infection &= lungs
    return infection


def reorient(arr: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Re-store a RAS+ array in the axis order/directions of ``axcodes`` (same world)."""
    t = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(tuple(axcodes)))
    out = apply_orientation(arr, t)
    return np.ascontiguousarray(out), affine @ inv_ornt_aff(t, arr.shape)


def _save(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(exist_ok=True)
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def write_case(root: Path, spec: PhantomSpec, seed: int, index: int) -> None:
    hu, labels, whole_lungs, affine = make_case(spec, seed, index)
    cid = f"phantom_{index:03d}"
    if index >= spec.n_cases - spec.n_windowed:
        # like Radiopaedia: lung window [-1250, 250] HU rescaled to 0..255
        vol = np.round(np.clip((hu + 1250.0) / 1500.0 * 255.0, 0, 255)).astype(np.int16)
    else:
        vol = np.round(hu).astype(np.int16)
    vol, aff = reorient(vol, affine, spec.axcodes)
    _save(vol, aff, root / IMAGE_DIR / f"{cid}.nii.gz")
    if spec.mask_layout in ("combined", "both"):
        _save(reorient(labels, affine, spec.axcodes)[0], aff, root / COMBINED_DIR / f"{cid}.nii.gz")
    if spec.mask_layout in ("separate", "both"):
        _save(reorient(whole_lungs, affine, spec.axcodes)[0], aff, root / LUNG_DIR / f"{cid}.nii.gz")
        infection = (labels == 3).astype(np.uint8)
        _save(reorient(infection, affine, spec.axcodes)[0], aff, root / INFECTION_DIR / f"{cid}.nii.gz")


def generate(out_dir: str | Path, preset: str = "tiny", seed: int = 0, **overrides) -> Path:
    """Write a Zenodo-layout raw folder of phantom cases into ``out_dir``; return it.

    ``out_dir`` gets ``COVID-19-CT-Seg_20cases/phantom_XXX.nii.gz`` plus the mask folders
    chosen by ``mask_layout`` and a ``phantom.json`` stamp. A folder already holding the
    same (preset, seed, overrides, generator version) is left as it is; otherwise it is
    rebuilt atomically (temp folder, then rename), and only if it is new, empty or a phantom
    folder lungbench wrote (fsutil.NotOwned otherwise).
    """
    out_dir = resolve_output(out_dir)
    spec = spec_for(preset, **overrides)
    stamp = {"generator_version": GENERATOR_VERSION, "preset": preset, "seed": int(seed),
             "spec": dataclasses.asdict(spec)}
    stamp["spec"]["blobs"] = list(spec.blobs)
    stamp["spec"]["blob_mm"] = list(spec.blob_mm)
    try:
        if json.loads((out_dir / STAMP).read_text()) == stamp:
            return out_dir
    except (OSError, ValueError):
        pass
    with output_lock(out_dir, "the phantom's raw folder"), \
            atomic_dir(out_dir, "phantom", "the phantom's raw folder") as tmp:
        for i in range(spec.n_cases):
            write_case(tmp, spec, seed, i)
        (tmp / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    return out_dir
