"""Read, verify, orient and window one case's volumes.

Axis conventions (pinned by tests):

* Volumes are brought to nibabel's closest canonical orientation, RAS+: array index
  ``i`` grows towards the patient's Right, ``j`` towards Anterior, ``k`` towards Superior.
  ``slice_index`` in the COCO files is ``k`` (0 = the most inferior slice of the volume).
* Each axial slice is shown in the radiological display: ``D = A[::-1, ::-1, k].T``, so
  image rows run anterior (top) -> posterior and columns run from the patient's right
  (image left) to the patient's left (image right).

The same transform is applied to image and masks.
"""
from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import (aff2axcodes, apply_orientation, inv_ornt_aff, io_orientation,
                                   ornt_transform)

from .errors import ConversionError

# The Radiopaedia cases of the release are already windowed to this lung window and
# rescaled to 0..255 (converters/covid19_ct_seg.json, "intensity").
PREWINDOW_HU = (-1250.0, 250.0)
ORIENTATION = {
    "canonical": "RAS+ (nibabel as_closest_canonical): i -> patient right, j -> anterior, "
                 "k -> superior",
    "slice_index": "k in the canonical volume (0 = most inferior slice)",
    "display": "radiological: image = A[::-1, ::-1, k].T; rows anterior (top) -> posterior, "
               "columns patient right (image left) -> patient left (image right)",
    "same_transform_for_masks": True,
}


# Rules on what a header claims, checked before any voxel is read
MIN_INPLANE = 8  # px per in-plane axis: below the smallest anchor (8 px), nothing can be found
# The most voxels a volume may claim (1 Gi: 2 GiB as int16; real CT is 512 x 512 x ~600 = 0.16 Gi).
# A 5 MB gzip can claim 2048 x 2048 x 640; reading it would fill memory. Raise it with the
# converter's verify.max_voxels or make predict's --max-voxels.
MAX_VOXELS = 1 << 30


def check_claims(path: Path, shape: tuple, dtype, affine: np.ndarray, case_id: str = "",
                 max_voxels: int = MAX_VOXELS) -> tuple:
    """The 3-D shape of a volume whose header claims ``shape`` and ``dtype``; refused
    (ConversionError naming the file) when the voxels are not real numbers (RGB, complex),
    when it claims more than ``max_voxels`` voxels, or an in-plane axis under MIN_INPLANE."""
    dt = np.dtype(dtype)
    if dt.fields is not None or dt.kind not in "biuf":
        kind = ("RGB colour" if dt.fields is not None else
                "complex" if dt.kind == "c" else f"non-numeric ({dt})")
        raise ConversionError(path, f"{kind} voxels (dtype {dt}); expected a grey-level volume of "
                              "integers or real numbers (CT in HU, or a label mask)", case_id=case_id)
    s = shape_3d(path, shape, case_id)
    n = int(np.prod(s, dtype=np.int64))
    if n > max_voxels:
        raise ConversionError(path, f"its header claims {' x '.join(map(str, s))} = {n:,} voxels, "
                              f"more than the limit of {max_voxels:,}; if the volume is real, raise "
                              "the limit (make data ARGS=verify.max_voxels=N, make predict "
                              "ARGS=--max-voxels=N)", case_id=case_id)
    try:  # the axes that lie in the axial plane (towards R/L and A/P)
        axes = [i for i in range(3) if int(io_orientation(np.asarray(affine, float))[i, 0]) in (0, 1)]
    except Exception:  # a singular affine: refused by check_affine, with its own message
        axes = [0, 1]
    small = [s[i] for i in axes if s[i] < MIN_INPLANE]
    if small:
        raise ConversionError(path, f"shape {s}: an axial slice is {' x '.join(str(s[i]) for i in axes)} "
                              f"pixels, under the minimum of {MIN_INPLANE} per side", case_id=case_id)
    return s


@dataclass
class Volume:
    """One NIfTI file, read once: data as stored, plus what the manifest records."""

    path: Path
    data: np.ndarray  # as stored (scaling applied), original axis order
    affine: np.ndarray
    sha256: str
    nbytes: int
    mtime_ns: int

    def source_record(self, root: Path, role: str) -> dict:
        return {"role": role, "path": relative(self.path, root), "sha256": self.sha256,
                "bytes": self.nbytes, "mtime_ns": self.mtime_ns}


def relative(path: Path, root: Path) -> str:
    """``path`` as dataset.json names a source: under ``root``, else as it is."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def read_volume(path: Path, max_voxels: int = MAX_VOXELS) -> Volume:
    """Read a .nii or .nii.gz file fully, hashing the bytes on the way.

    The header's claims are checked first (``check_claims``: real numbers, at most
    ``max_voxels`` voxels, a usable slice size), before any voxel is read. Any read/parse
    failure (truncated gzip, bad header, short data) becomes a ConversionError naming the file.
    """
    path = Path(path)
    read_header(path, max_voxels=max_voxels)
    try:
        st = path.stat()
        raw = path.read_bytes()
    except OSError as e:
        raise ConversionError(path, f"cannot read file: {e.strerror or e}") from None
    sha = hashlib.sha256(raw).hexdigest()
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise ConversionError(path, f"truncated or corrupt gzip stream ({e})") from None
    errors = []
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            img = cls.from_bytes(raw)
            break
        except Exception as e:  # nibabel raises several types for a bad header
            errors.append(str(e))
    else:
        raise ConversionError(path, f"not a readable NIfTI file ({errors[0]})")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:
        raise ConversionError(path, f"truncated or unreadable voxel data ({e})") from None
    return Volume(path=path, data=data, affine=np.asarray(img.affine, dtype=np.float64),
                  sha256=sha, nbytes=st.st_size, mtime_ns=st.st_mtime_ns)


def shape_3d(path: Path, shape: tuple, case_id: str) -> tuple:
    """The 3-D shape; trailing singleton axes (X, Y, Z, 1) are dropped, else not 3-D fails."""
    s = tuple(int(n) for n in shape)
    while len(s) > 3 and s[-1] == 1:
        s = s[:-1]
    if len(s) != 3:
        kind = f"{len(s)}-D" if len(s) != 4 else "4-D (time series?)"
        raise ConversionError(path, f"{kind} volume of shape {tuple(shape)}; expected a 3-D volume",
                              case_id=case_id)
    return s


def squeeze_3d(vol: Volume, case_id: str) -> np.ndarray:
    """The 3-D array of ``vol`` (see ``shape_3d``)."""
    return vol.data.reshape(shape_3d(vol.path, vol.data.shape, case_id))


def check_geometry(image_path: Path, image_shape: tuple, image_affine: np.ndarray,
                   mask_path: Path, mask_shape: tuple, mask_affine: np.ndarray,
                   affine_atol: float, case_id: str) -> None:
    """Mask and image must have the same shape and (within ``affine_atol`` mm) affine."""
    if tuple(mask_shape) != tuple(image_shape):
        raise ConversionError(mask_path, f"shape {tuple(mask_shape)} does not match the image "
                              f"{image_path.name} shape {tuple(image_shape)}", case_id=case_id)
    diff = float(np.max(np.abs(np.asarray(mask_affine) - np.asarray(image_affine))))
    if not diff <= affine_atol:
        raise ConversionError(
            mask_path, f"affine differs from the image {image_path.name} by up to {diff:.4g} "
            f"(tolerance verify.affine_atol={affine_atol}); image and mask are not aligned",
            case_id=case_id)


def read_header(path: Path, case_id: str | None = None,
                max_voxels: int = MAX_VOXELS) -> tuple[tuple, np.ndarray]:
    """(3-D shape, float64 affine) of a NIfTI file from its header alone (no voxel read), its
    claims checked (``check_claims``); ConversionError naming the file if unreadable or refused."""
    try:
        img = nib.load(str(path))
        affine = np.asarray(img.affine, dtype=np.float64)
    except FileNotFoundError:
        raise ConversionError(path, "cannot read file: No such file or directory",
                              case_id=case_id) from None
    except Exception as e:  # nibabel raises several types for a bad header
        raise ConversionError(path, f"not a readable NIfTI file ({e})", case_id=case_id) from None
    return check_claims(path, img.shape, img.get_data_dtype(), affine, case_id, max_voxels), affine


def check_headers(image_path: Path, mask_paths: list[Path], affine_atol: float,
                  case_id: str, max_voxels: int = MAX_VOXELS) -> None:
    """Cheap pre-pass on the NIfTI headers only (no voxel data read): readable, what they claim
    (``check_claims``), same shape and affine. Lets a structural problem fail before any work."""
    ishape, iaff = read_header(image_path, case_id, max_voxels)
    for mask_path in mask_paths:
        mshape, maff = read_header(mask_path, case_id, max_voxels)
        check_geometry(image_path, ishape, iaff, mask_path, mshape, maff, affine_atol, case_id)


def check_finite(vol: Volume, data: np.ndarray, case_id: str) -> None:
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise ConversionError(vol.path, f"{bad} non-finite voxel(s) (NaN or Inf)",
                                  case_id=case_id)


def check_labels(vol: Volume, data: np.ndarray, allowed: tuple[int, ...],
                 case_id: str) -> tuple[np.ndarray, dict[int, int]]:
    """Check every value is one of ``allowed``; return (uint8 mask, voxel count per value).

    Counting each allowed value (a few linear passes) is much cheaper than ``np.unique``
    (a sort) on a 100-million-voxel volume; the sort only runs to name bad values.
    """
    check_finite(vol, data, case_id)
    counts = {v: int(np.count_nonzero(data == v)) for v in allowed}
    if sum(counts.values()) != data.size:
        unknown = [v for v in np.unique(data).tolist() if v not in allowed]
        shown = ", ".join(f"{v:g}" for v in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise ConversionError(vol.path, f"unknown label value(s) {shown}; expected only "
                              f"{list(allowed)}", case_id=case_id)
    return data.astype(np.uint8, copy=False), counts


def canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Reorient ``data`` to RAS+; returns ``(view, canonical affine, ornt as list)``."""
    ornt = io_orientation(affine)
    return (apply_orientation(data, ornt), affine @ inv_ornt_aff(ornt, data.shape),
            ornt.tolist())


def axcodes(affine: np.ndarray) -> str:
    return "".join(c or "?" for c in aff2axcodes(affine))


def display_slice(vol_ras: np.ndarray, k: int) -> np.ndarray:
    """Axial slice ``k`` of a RAS+ volume in radiological display, shape (rows=Y, cols=X).

    Returned as the transpose of a C-contiguous (X, Y) copy: column-major consumers
    (COCO RLE) read it without another copy.
    """
    return np.ascontiguousarray(vol_ras[::-1, ::-1, k]).T


def is_prewindowed(data: np.ndarray) -> bool:
    """True for volumes already mapped to 0..255 (the Radiopaedia cases), not HU.

    A CT in HU always holds air (about -1000) outside the body, so a volume whose values
    all lie in [0, 255] has been windowed already.
    """
    return float(data.min()) >= 0.0 and float(data.max()) <= 255.0


def window_slice(sl: np.ndarray, windows: list[tuple[float, float]], prewindowed: bool) -> np.ndarray:
    """uint8 image of one slice: (H, W) for one window, (H, W, C) for several.

    HU are mapped linearly so that ``lo`` -> 0 and ``hi`` -> 255, clipped, rounded.
    Pre-windowed 0..255 slices are kept as they are for the release's own lung window,
    and mapped back to HU (inverse of that window) for any other window.
    """
    chans = []
    x = sl.astype(np.float32, copy=False)
    for lo, hi in windows:
        if prewindowed:
            if (float(lo), float(hi)) == PREWINDOW_HU:
                chans.append(np.clip(np.rint(x), 0, 255).astype(np.uint8))
                continue
            hu = x * np.float32((PREWINDOW_HU[1] - PREWINDOW_HU[0]) / 255.0) + np.float32(PREWINDOW_HU[0])
        else:
            hu = x
        scaled = (hu - np.float32(lo)) * np.float32(255.0 / (hi - lo))
        chans.append(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    return chans[0] if len(chans) == 1 else np.stack(chans, axis=-1)


def display_pixels(vol_ras: np.ndarray, k: int, windows: list[tuple[float, float]],
                   prewindowed: bool) -> np.ndarray:
    """The uint8 image of axial slice ``k`` of a RAS+ CT volume, as the converter writes it to
    PNG and ``make predict`` feeds it to the model: radiological display (``display_slice``),
    windowed (``window_slice``); (H, W) for one window, (H, W, C) for several."""
    # window in the (W, H) memory order, transpose only the uint8 result
    pixels = window_slice(display_slice(vol_ras, k).T, windows, prewindowed)
    return np.ascontiguousarray(np.swapaxes(pixels, 0, 1))  # (W, H[, C]) -> (H, W[, C])


def from_canonical(vol_ras: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of ``canonical``: a RAS+ array back in the voxel order of the file whose
    ``affine`` it came from (same shape as that file's 3-D data)."""
    ornt = io_orientation(affine)
    ras = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    return apply_orientation(vol_ras, ornt_transform(ras, ornt))


def undisplay_slice(image: np.ndarray) -> np.ndarray:
    """Inverse of ``display_slice``: a (rows=Y, cols=X) display image back to the (X, Y)
    axial slice of the RAS+ volume (``vol_ras[:, :, k] = undisplay_slice(D)``)."""
    return np.asarray(image).T[::-1, ::-1]
