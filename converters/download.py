"""Fetch, verify and safely extract the public COVID-19-CT-Seg release (``make download``).

The four Zenodo archives, their sha256 values and the URL pattern come from
``converters/covid19_ct_seg.json`` (a copy of the project's dataset facts, so this
module never reads outside the package). Layout written under ``--dest``::

    <dest>/.archives/<name>.zip          downloaded archives (kept: re-runs do no work)
    <dest>/.archives/<name>.zip.part     an interrupted download, resumed next time
    <dest>/<name without .zip>/...       each archive's contents, e.g. Lung_Mask/<case>.nii.gz

Downloads go through pooch (checksum verification, temp file then move); the pooch
downloader used here resumes an interrupted ``.part`` file with an HTTP Range request
and falls back to a full download when the server ignores ranges. A checksum mismatch
deletes the downloaded file and raises :class:`ChecksumError`.

Extraction checks every member before writing a byte: no absolute paths or ``..``
components, no links (symbolic or hard) or device files, a cap on the total size and on
the compression ratio (zip bombs); sizes are enforced again while copying, in case the
archive's headers lie. Members go into a temporary folder next to the target, which is
renamed into place only when everything is written.

CLI::

    python -m converters.download --dest DIR [--base-url URL] [--only NAME ...]

This module imports neither torch nor detectron2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

RECORD_PATH = Path(__file__).with_name("covid19_ct_seg.json")
ARCHIVE_SUBDIR = ".archives"
MARKER = ".lungbench-extracted.json"  # written inside an extracted folder: which archive it came from
DEFAULT_MAX_BYTES = 20 * 1024**3  # per archive, uncompressed; the real release is ~3 GB in all
DEFAULT_MAX_RATIO = 100.0  # NIfTI .nii.gz members are already compressed: ratio ~1
RATIO_FLOOR_BYTES = 1024**2  # the ratio guard ignores members smaller than this
CHUNK = 1 << 20


class DownloadError(Exception):
    """A download, verification or extraction problem; the message says what and where."""


class ChecksumError(DownloadError):
    """The downloaded file does not have the published sha256 (the file was deleted)."""


class UnsafeArchiveError(DownloadError):
    """An archive member would escape the target, is a link/device, or is absurdly large."""


# ---------------------------------------------------------------------------- record


@dataclass(frozen=True)
class Archive:
    name: str  # file name, e.g. "Lung_Mask.zip"
    url: str
    sha256: str

    @property
    def folder(self) -> str:
        """The folder the archive extracts into (its name without the archive suffix)."""
        for ext in (".tar.gz", ".tgz", ".tar", ".zip"):
            if self.name.endswith(ext):
                return self.name[: -len(ext)]
        return self.name


def load_record(path: str | os.PathLike = RECORD_PATH) -> dict:
    """The dataset facts (``files`` with sha256 per archive, ``file_url_pattern``)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DownloadError(f"{path}: cannot read the dataset record: {e}") from e
    files = record.get("files")
    if not isinstance(files, dict) or not files or "{name}" not in str(record.get("file_url_pattern", "")):
        raise DownloadError(f"{path}: the dataset record needs 'files' and a 'file_url_pattern' with {{name}}")
    for name, info in files.items():
        if not re.fullmatch(r"[0-9a-f]{64}", str(info.get("sha256", ""))):
            raise DownloadError(f"{path}: archive {name} has no valid sha256")
    return record


def archives(record: dict, base_url: str | None = None, only: Sequence[str] | None = None) -> list[Archive]:
    """The archives to fetch: URL from ``base_url`` (``<base>/<name>``) or the record's pattern.

    ``only`` selects by file name, with or without the ``.zip`` suffix.
    """
    names = list(record["files"])
    if only:
        wanted = []
        for o in only:
            match = [n for n in names if o in (n, Archive(n, "", "").folder)]
            if not match:
                raise DownloadError(f"unknown archive {o!r}; known: {', '.join(names)}")
            wanted += [m for m in match if m not in wanted]
        names = wanted
    return [Archive(n, f"{base_url.rstrip('/')}/{n}" if base_url else
                    record["file_url_pattern"].format(name=n), record["files"][n]["sha256"])
            for n in names]


# ---------------------------------------------------------------------------- download


class ResumingDownloader:
    """A pooch downloader (``downloader(url, output_file, pooch)``) that resumes.

    Bytes go to ``part`` (kept when the transfer breaks); a complete ``part`` is moved
    onto pooch's temporary ``output_file``, which pooch then verifies and moves into
    place, or deletes on a checksum mismatch.
    """

    def __init__(self, part: Path, progressbar: bool = True, timeout: float = 60.0):
        self.part = Path(part)
        self.progressbar = progressbar
        self.timeout = timeout

    def __call__(self, url: str, output_file: str, pooch):
        import requests  # pooch's own dependency; imported late to keep the CLI start fast
        from tqdm import tqdm

        have = self.part.stat().st_size if self.part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as r:
            if have and r.status_code == 416:  # the part is complete (or bogus): start over
                self.part.unlink()
                return self(url, output_file, pooch)
            r.raise_for_status()
            resumed = have and r.status_code == 206
            mode = "ab" if resumed else "wb"  # a 200 to a Range request means: full body
            start = have if resumed else 0
            total = r.headers.get("Content-Length")
            total = int(total) + start if total is not None else None
            with open(self.part, mode) as f, tqdm(
                    total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=self.part.name[:-5], disable=not self.progressbar, leave=False) as bar:
                for chunk in r.iter_content(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        os.replace(self.part, output_file)


def fetch(archive: Archive, archive_dir: str | os.PathLike, retries: int = 2, progressbar: bool = True) -> Path:
    """Download ``archive`` into ``archive_dir`` (no-op when a verified copy is there).

    Network failures are retried ``retries`` times, resuming the ``.part`` file; a
    checksum mismatch is not retried (it deletes the download and raises).
    """
    import pooch
    import requests

    archive_dir = Path(archive_dir)
    archive_dir.mkdir(parents=True, exist_ok=True)
    target = archive_dir / archive.name
    part = archive_dir / (archive.name + ".part")
    downloader = ResumingDownloader(part, progressbar=progressbar)
    for attempt in range(retries + 1):
        try:
            return Path(pooch.retrieve(archive.url, known_hash=f"sha256:{archive.sha256}", fname=archive.name,
                                       path=archive_dir, downloader=downloader, progressbar=False))
        except requests.RequestException as e:  # (before ValueError: some of these are ValueErrors too)
            if attempt == retries:
                raise DownloadError(
                    f"{archive.name}: download from {archive.url} failed after {retries + 1} attempt(s): {e}"
                    + (f"; {part.stat().st_size} bytes kept in {part}, resumed next time" if part.exists() else "")
                ) from e
            time.sleep(min(2**attempt, 10))
        except ValueError as e:  # pooch's hash mismatch; pooch has deleted its temp file
            if "hash" not in str(e).lower():
                raise DownloadError(f"{archive.name}: {e}") from e
            part.unlink(missing_ok=True)
            target.unlink(missing_ok=True)  # a stale copy that failed the check before ("update")
            got = re.search(r"but got ([0-9a-f]{64})", str(e))
            raise ChecksumError(
                f"{archive.name}: checksum mismatch: expected sha256 {archive.sha256}, got "
                f"{got.group(1) if got else 'another value'} (from {archive.url}). The downloaded file was "
                f"deleted ({target} does not exist); the server copy may be corrupt or changed."
            ) from e
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------- extract


@dataclass(frozen=True)
class _Member:
    rel: PurePosixPath  # safe relative path
    is_dir: bool
    size: int  # declared uncompressed size
    packed: int | None  # compressed size where the format says (zip), else None
    ref: object  # ZipInfo or TarInfo


def _safe_relpath(name: str, archive: Path) -> PurePosixPath | None:
    """The member's path relative to the target, or raise; None for the archive root."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: member {name!r} has a NUL byte in its name")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} escapes the target folder ('..'); refusing to extract")
    return PurePosixPath(*parts) if parts else None


def _members(path: Path) -> Iterator[_Member]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                # Unix-made zips store the file type in the high bits (0 when only the
                # permissions are set): only regular files and folders are allowed (a
                # symlink member holds its target path as data).
                if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    kind = "a symbolic link" if stat.S_ISLNK(mode) else "a special file"
                    raise UnsafeArchiveError(f"{path}: member {info.filename!r} is {kind}; refusing to extract")
                rel = _safe_relpath(info.filename, path)
                if rel is not None:
                    yield _Member(rel, info.is_dir(), info.file_size, info.compress_size, info)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            for info in tf.getmembers():
                if not (info.isfile() or info.isdir()):
                    kind = ("a symbolic link" if info.issym() else "a hard link" if info.islnk()
                            else "a special file")
                    raise UnsafeArchiveError(f"{path}: member {info.name!r} is {kind}; refusing to extract")
                rel = _safe_relpath(info.name, path)
                if rel is not None:
                    yield _Member(rel, info.isdir(), info.size, None, info)
    else:
        raise DownloadError(f"{path}: not a zip or tar archive")


def check_archive(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES,
                  max_ratio: float = DEFAULT_MAX_RATIO) -> list[_Member]:
    """Every member, checked (paths, types, sizes); raises :class:`UnsafeArchiveError`."""
    path = Path(path)
    try:
        members = list(_members(path))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise DownloadError(f"{path}: unreadable archive: {e}") from e
    seen: dict[PurePosixPath, bool] = {}
    total = 0
    for m in members:
        if m.rel in seen and not (m.is_dir and seen[m.rel]):
            raise UnsafeArchiveError(f"{path}: member {str(m.rel)!r} appears twice; refusing to extract")
        seen[m.rel] = m.is_dir
        total += m.size
        if m.packed is not None and m.size > RATIO_FLOOR_BYTES and m.size > max_ratio * max(m.packed, 1):
            raise UnsafeArchiveError(
                f"{path}: member {str(m.rel)!r} expands {m.size / max(m.packed, 1):.0f}x "
                f"(limit {max_ratio:g}x): looks like a zip bomb; refusing to extract")
    if total > max_bytes:
        raise UnsafeArchiveError(f"{path}: {total} bytes uncompressed exceeds the limit of {max_bytes} bytes")
    # tar.gz has no per-member compressed size: guard the archive as a whole
    if members and members[0].packed is None and total > RATIO_FLOOR_BYTES:
        packed = path.stat().st_size
        if total > max_ratio * max(packed, 1):
            raise UnsafeArchiveError(f"{path}: expands {total / packed:.0f}x (limit {max_ratio:g}x); "
                                     "looks like a decompression bomb; refusing to extract")
    # a file may not also be a folder of another member (would write through it)
    files = {m.rel for m in members if not m.is_dir}
    for m in members:
        for parent in m.rel.parents:
            if parent in files:
                raise UnsafeArchiveError(f"{path}: member {str(m.rel)!r} lies below the file {str(parent)!r}")
    return members


def _strip_root(members: list[_Member], folder: str) -> int:
    """1 when every member sits under one top folder named like the archive, else 0.

    Avoids ``Lung_Mask/Lung_Mask/...`` for archives that carry their own folder.
    """
    tops = {m.rel.parts[0] for m in members}
    if tops == {folder} and any(len(m.rel.parts) > 1 for m in members):
        return 1
    return 0


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_ratio: float = DEFAULT_MAX_RATIO, strip: str | None = None,
                 marker: dict | None = None) -> Path:
    """Extract ``archive`` into the folder ``target`` (which must not exist yet).

    All members are checked first (:func:`check_archive`); then they are written into a
    temporary sibling folder, with sizes enforced while copying, and that folder is
    renamed to ``target``. Nothing is left behind on failure. ``strip``: a top folder
    name to drop when every member sits under it. ``marker``: written as JSON to
    ``target/.lungbench-extracted.json`` before the rename, so a complete folder always
    carries it. File modes from the archive are not applied (plain 0644 files).
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise DownloadError(f"{target}: already exists; refusing to extract {archive.name} over it")
    members = check_archive(archive, max_bytes, max_ratio)
    n_strip = _strip_root(members, strip) if strip else 0
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        root = tmp.resolve()
        written = 0
        with _open_members(archive) as src:
            for m in members:
                parts = m.rel.parts[n_strip:]
                if not parts:
                    continue
                out = tmp.joinpath(*parts)
                if root not in out.resolve().parents and out.resolve() != root:  # belt and braces
                    raise UnsafeArchiveError(f"{archive}: member {str(m.rel)!r} resolves outside the target")
                if m.is_dir:
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                n = 0
                with src(m) as fin, open(out, "xb") as fout:
                    for block in iter(lambda: fin.read(CHUNK), b""):
                        n += len(block)
                        if n > m.size or written + n > max_bytes:
                            raise UnsafeArchiveError(
                                f"{archive}: member {str(m.rel)!r} holds more bytes than its header says "
                                f"({m.size}) or the archive passes the {max_bytes}-byte limit; refusing")
                        fout.write(block)
                written += n
        if marker is not None:
            (tmp / MARKER).write_text(json.dumps(marker) + "\n")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@contextmanager
def _open_members(path: Path) -> Iterator:
    """``open_member(_Member) -> binary file`` for the zip or tar archive ``path``."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            yield lambda m: zf.open(m.ref)
    else:
        with tarfile.open(path) as tf:
            yield lambda m: tf.extractfile(m.ref)


# ---------------------------------------------------------------------------- all


def download_all(dest: str | os.PathLike, base_url: str | None = None, only: Sequence[str] | None = None,
                 record: dict | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_ratio: float = DEFAULT_MAX_RATIO, retries: int = 2, progressbar: bool = True,
                 log=print) -> list[Path]:
    """Fetch, verify and extract each archive under ``dest``; returns the extracted folders.

    Re-running is cheap: a verified archive is not downloaded again, and a folder whose
    marker names the same archive sha256 is not extracted again.
    """
    dest = Path(dest)
    record = record if record is not None else load_record()
    out = []
    for a in archives(record, base_url, only):
        path = fetch(a, dest / ARCHIVE_SUBDIR, retries=retries, progressbar=progressbar)
        target = dest / a.folder
        marker = target / MARKER
        if marker.exists():
            try:
                done = json.loads(marker.read_text()).get("sha256") == a.sha256
            except (OSError, json.JSONDecodeError):
                done = False
            if done:
                log(f"{a.name}: verified, already extracted in {target}")
                out.append(target)
                continue
        if target.exists():
            raise DownloadError(f"{target}: exists but was not extracted from {a.name} (sha256 {a.sha256[:12]}...); "
                                "move it away and run again")
        safe_extract(path, target, max_bytes=max_bytes, max_ratio=max_ratio, strip=a.folder,
                     marker={"archive": a.name, "sha256": a.sha256, "url": a.url})
        log(f"{a.name}: verified (sha256 {a.sha256[:12]}...), extracted to {target}")
        out.append(target)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters.download", description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", required=True, help="folder for the raw dataset (archives + extracted folders)")
    p.add_argument("--base-url", help="fetch <base-url>/<archive name> instead of Zenodo (mirrors, tests)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these archives (e.g. Lung_Mask.zip or Lung_Mask)")
    p.add_argument("--record", default=str(RECORD_PATH), help="dataset facts JSON (archive names, sha256, URL)")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="uncompressed size limit per archive")
    p.add_argument("--max-ratio", type=float, default=DEFAULT_MAX_RATIO, help="compression ratio limit")
    p.add_argument("--retries", type=int, default=2, help="retries after a network failure (resuming)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        record = load_record(args.record)
        download_all(args.dest, args.base_url, args.only, record=record, max_bytes=args.max_bytes,
                     max_ratio=args.max_ratio, retries=args.retries, progressbar=not args.no_progress)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: partial downloads are kept as .part files and resumed next time", file=sys.stderr)
        return 130
    if "license_note" in record:
        print(f"License: {record['license_note']} Record: {record.get('record_url', '')}")
    if "citation" in record:
        print(f"Cite: {record['citation']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
