"""Filesystem rules every stage follows: users' folders are never touched, outputs are whole.

Standard library only (``make clean`` runs it without the virtual environment), imported by
converters/, benchmark/ and reports/ alike.

- **Ownership.** A folder lungbench makes gets an owner marker, ``.lungbench-owner.json``
  (what made it, when, the config hash, and for folders replaced wholesale the list of
  files it wrote). Before lungbench replaces, deletes or cleans a folder it checks the
  marker; a folder without one, or of another kind, or holding files lungbench did not
  write, is refused with ``NotOwned`` naming the folder and what to do.
- **Atomic outputs.** Files are written to a temp name and renamed (``write_bytes``);
  folders are built in a hidden, marked temp folder next to the target and swapped in
  (``atomic_dir``). Temp and backup names are lungbench's own
  (``.<name>.lungbench-tmp-<pid>-<random>``, ``.<name>.lungbench-old-<pid>-<random>``) and
  hold a marker; only such folders of a process that is gone are cleaned up.
- **One writer per output.** ``output_lock`` takes an exclusive ``flock`` next to the output;
  a second writer gets ``OutputBusy`` at once.
- **Links are written through.** An output path that is a symlink is resolved first: the
  link stays, its target is what is checked and written.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import secrets
import shutil
import socket
import tempfile
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

MARKER = ".lungbench-owner.json"
MARKER_SCHEMA = 1
TMP_TAG = "lungbench-tmp"
OLD_TAG = "lungbench-old"
LOCK_TAG = "lungbench-lock"


def owned_names(kind: str) -> tuple[str, ...] | None:
    """What lungbench writes at the top of a folder of ``kind`` that grows while it works
    (claimed, not built whole); None for other kinds. make clean deletes such a folder only when
    everything in it is one of these, a lungbench folder of its own (itself checked), an empty
    folder or lungbench's lock/temp names."""
    from contracts import result, sweep  # both import this module: imported when first needed

    return {"run": (result.FILENAME, ".hydra", "train.log", "d2"),
            "sweep": (sweep.FILENAME, "multirun.yaml")}.get(kind)


class NotOwned(Exception):
    """lungbench would write, replace or delete a folder it did not make (or a source)."""

    def __init__(self, folder: str | os.PathLike, problem: str, hint: str = "") -> None:
        self.folder, self.problem, self.hint = str(folder), problem, hint
        super().__init__(f"{folder}: {problem}" + (f"; {hint}" if hint else ""))


class OutputBusy(Exception):
    """Another lungbench process is writing the same output right now."""


# --------------------------------------------------------------------------- hashing
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- files
def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one, never
    half of one. The temp name is unique (concurrent writers never share it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".{TMP_TAG}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def sanitize(obj: Any) -> Any:
    """Return a JSON-safe copy of ``obj``: NaN/inf -> None, numpy scalars/arrays -> Python,
    tuples -> lists, Paths -> str. Dict keys become str."""
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int)):  # bool is an int
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    # numpy / torch scalars and arrays without importing them
    if hasattr(obj, "tolist"):
        return sanitize(obj.tolist())
    if hasattr(obj, "item"):
        return sanitize(obj.item())
    raise TypeError(f"cannot write as JSON: {type(obj).__name__}: {obj!r}")


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``sanitize(data)`` as JSON to ``path`` via a temp file + rename (never half-written)."""
    return write_text(path, json.dumps(sanitize(data), indent=1, allow_nan=False) + "\n", fsync=True)


# What an output's OSError means to the user, for the errors that are about the place, not
# the data: the command says so in one line instead of a traceback.
_PLACE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied"}


def output_error(e: BaseException) -> str | None:
    """A one-line message for a disk-full / read-only / permission error, else None."""
    why = _PLACE_ERRORS.get(getattr(e, "errno", None)) if isinstance(e, OSError) else None
    if why is None:
        return None
    where = e.filename or "an output"
    return (f"{where}: cannot write there: {why} ({e.strerror}); nothing half-written is kept "
            "(outputs are swapped in whole): free space or choose a writable folder, then run "
            "the same command again")


# --------------------------------------------------------------------------- paths
def resolve_output(path: str | os.PathLike) -> Path:
    """The absolute path an output is written at: a symlink is followed (written through)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def overlaps(a: Path, b: Path) -> bool:
    """True when one folder is the other or lies inside it (both resolved)."""
    a, b = resolve_output(a), resolve_output(b)
    return a == b or a in b.parents or b in a.parents


# --------------------------------------------------------------------------- markers
def read_marker(folder: str | os.PathLike) -> dict | None:
    """The owner marker of ``folder`` (a dict), or None when there is none or it is unreadable."""
    try:
        m = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("tool") == "lungbench" else None


def write_marker(folder: str | os.PathLike, kind: str, config_hash: str | None = None,
                 files: Iterable[str] | None = None) -> None:
    """Write ``folder``'s owner marker (atomically). ``files``: relative paths lungbench wrote
    there, for folders it replaces wholesale (anything else found there later is foreign)."""
    marker = {"tool": "lungbench", "schema": MARKER_SCHEMA, "kind": kind,
              "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "host": socket.gethostname(), "pid": os.getpid(), "config_hash": config_hash}
    if files is not None:
        marker["files"] = sorted(files)
    elif (owns := owned_names(kind)) is not None:
        marker["owns"] = list(owns)
    write_text(Path(folder) / MARKER, json.dumps(marker, indent=1) + "\n")


def list_files(folder: Path) -> list[str]:
    """Every file below ``folder`` (relative, posix), links included as files, the marker not."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            p = (rel / name).as_posix()
            if p != MARKER:
                out.append(p)
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
    return sorted(out)


def foreign_files(folder: Path, marker: dict) -> list[str]:
    """Files in an owned folder that lungbench did not write there (its marker's ``files``)."""
    known = set(marker.get("files") or [])
    return [p for p in list_files(folder) if p not in known]


def _lungbench_name(name: str) -> bool:
    """A lock file or temp/backup folder name of lungbench's own (``.<x>.lungbench-...``)."""
    return name.startswith(".") and any(f".{tag}" in name for tag in (LOCK_TAG, TMP_TAG, OLD_TAG))


def stray_files(folder: Path) -> list[str]:
    """What in the lungbench folder ``folder`` lungbench did not write (relative paths).

    A folder built whole lists its files in its marker (``files``); a folder that grows lists
    the top-level names it writes (``owns``), and a lungbench folder inside it is checked the
    same way (its strays are this folder's strays); empty folders and lungbench's own lock and
    temp names are not strays. A marker with neither list owns nothing but its marker."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        return list_files(folder)
    if "files" in marker:
        return foreign_files(folder, marker)
    owns = set(marker.get("owns") or [])
    out: list[str] = []
    for p in sorted(folder.iterdir()):
        if p.name == MARKER or p.name in owns or _lungbench_name(p.name):
            continue
        if p.is_dir() and not p.is_symlink():  # unmarked: all of it; marked: its own strays
            out += [f"{p.name}/{q}" for q in stray_files(p)]
        else:
            out.append(p.name)
    return out


def describe(items: Sequence[str], most: int = 5, sep: str = ", ") -> str:
    """``items`` for a one-line message: the first ``most``, then how many more (``a, b (+3 more)``)."""
    return sep.join(items[:most]) + (f" (+{len(items) - most} more)" if len(items) > most else "")


def check_owned(folder: str | os.PathLike, kind: str, what: str, replace: bool = False) -> None:
    """Raise NotOwned unless lungbench may use ``folder`` as its ``kind`` output.

    Allowed: the folder does not exist, is empty, or holds lungbench's marker of this kind
    (and, with ``replace``, nothing but the files that marker lists). ``what`` names the
    folder for the user ("DATA_OUT", "RUN_DIR", ...).
    """
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise NotOwned(folder, f"{what} is a broken symlink", "point it at a folder or remove it")
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return
    if not folder.is_dir():
        raise NotOwned(folder, f"{what} exists and is not a folder", f"choose another {what}")
    m = read_marker(folder)
    if m is None:
        raise NotOwned(folder, f"{what} holds files and was not made by lungbench (no {MARKER})",
                       f"lungbench never writes into a folder it did not make: choose a new or "
                       f"empty folder for {what} (an output of a lungbench older than its "
                       "markers you delete yourself)")
    if m.get("kind") != kind:
        raise NotOwned(folder, f"{what} is a lungbench {m.get('kind')!r} folder, not a {kind!r} folder",
                       f"choose another {what}")
    if replace:
        extra = foreign_files(folder, m)
        if extra:
            raise NotOwned(folder, f"{what} would be rebuilt, but it holds files lungbench did not "
                           f"write there: {describe(extra)}",
                           f"move them out first, or choose another {what}")


def claim(folder: str | os.PathLike, kind: str, what: str, config_hash: str | None = None,
          allow: Iterable[str] = ()) -> Path:
    """Make ``folder`` a lungbench ``kind`` folder (created if missing) and return it resolved.

    Refused (NotOwned) for a folder that holds files and another marker or none. ``allow``:
    top-level names that may already stand in an unmarked folder because lungbench's own
    launcher wrote them there a moment ago (Hydra's ``.hydra`` in a run folder it created).
    """
    folder = resolve_output(folder)
    if folder.is_dir() and read_marker(folder) is None:
        present = {p.name for p in folder.iterdir()}
        if present and present <= set(allow):
            write_marker(folder, kind, config_hash)
            return folder
    check_owned(folder, kind, what)
    folder.mkdir(parents=True, exist_ok=True)
    if read_marker(folder) is None:
        write_marker(folder, kind, config_hash)
    return folder


# --------------------------------------------------------------------------- locks
# Lock fds this process holds. A forked child (a conversion's pool worker, a DataLoader worker)
# inherits them, and an flock lives while any copy of its fd is open: were the children to keep
# theirs, a `kill -9` of the owner would leave the lock held by orphans. Children close them.
_HELD_LOCK_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_LOCK_FDS):
        with suppress(OSError):
            os.close(fd)
    _HELD_LOCK_FDS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of ``output`` (next to it, so a folder swapped in keeps its lock)."""
    output = resolve_output(output)
    return output.parent / f".{output.name}.{LOCK_TAG}"


def _acquire(path: Path, mode: int) -> int | None:
    """An fd holding ``mode`` (LOCK_SH/LOCK_EX) on ``path``, or None when it is held otherwise."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return None
        # the file may have been unlinked by the previous holder between open and flock
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _release(path: Path, fd: int) -> None:
    """Drop the lock; the last holder (it can take the lock exclusively) removes the file."""
    _HELD_LOCK_FDS.discard(fd)
    with suppress(OSError):  # the flock fails while other readers hold it: theirs to remove
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
    os.close(fd)


@contextmanager
def output_lock(output: str | os.PathLike, what: str = "output", shared: bool = False) -> Iterator[None]:
    """Hold a lock on ``output`` for the block: exclusive for a writer (the default), shared
    for a reader (``shared=True``: any number of readers, no writer). A conflicting lock raises
    OutputBusy at once, naming the output and the process that holds it; readers never wait
    for a writer, nor a writer for readers. The lock dies with the process that took it."""
    output = resolve_output(output)
    if shared and read_marker(output) is None:
        yield  # not lungbench's folder: nothing of lungbench's rebuilds or deletes it
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(output)
    try:
        fd = _acquire(path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    except OSError as e:
        if not (shared and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
            raise
        yield  # a read-only dataset (shared storage): nobody can rebuild it from here either
        return
    if fd is None:
        try:
            holder = path.read_text().strip()
        except OSError:
            holder = ""
        # a writer leaves its pid in the file; readers leave it empty
        doing = (f"being written by {holder}" if holder
                 else "being read by another lungbench process (a training, a prediction or a report)")
        raise OutputBusy(f"{output}: {what} is {doing} right now; wait for it to finish"
                         + ("" if shared else f", or choose another {what}")) from None
    _HELD_LOCK_FDS.add(fd)
    try:
        if not shared:  # readers write nothing: several may hold the lock at once
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        if not shared:  # a reader still holding the file must not show this writer as holder
            os.ftruncate(fd, 0)
        _release(path, fd)


def in_use(output: str | os.PathLike, readers: bool = False) -> bool:
    """True when a writer holds ``output``'s lock right now (e.g. a run still training);
    with ``readers``, when anybody holds it (a training reading a dataset counts)."""
    path = lock_path(output)
    if not path.exists():
        return False
    fd = _acquire(path, fcntl.LOCK_EX if readers else fcntl.LOCK_SH)
    if fd is None:
        return True
    _release(path, fd)
    return False


# --------------------------------------------------------------------------- folders
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _side_name(final: Path, tag: str) -> Path:
    return final.with_name(f".{final.name}.{tag}-{os.getpid()}-{secrets.token_hex(3)}")


def remove_stale_temps(final: Path) -> None:
    """Delete lungbench's own temp/backup folders of ``final`` left by processes that died.

    Only hidden folders with lungbench's temp or backup name *and* a lungbench marker are
    removed (a user's ``covid.old-2020`` is never looked at); those of a live process stay.
    """
    final = resolve_output(final)
    for tag in (TMP_TAG, OLD_TAG):
        for p in final.parent.glob(f".{final.name}.{tag}-*-*"):
            pid = p.name[len(final.name) + len(tag) + 3:].split("-")[0]
            if (pid.isdigit() and not _pid_alive(int(pid)) and p.is_dir() and not p.is_symlink()
                    and read_marker(p) is not None):
                shutil.rmtree(p, ignore_errors=True)


def make_temp_dir(final: Path, kind: str, config_hash: str | None = None) -> Path:
    """A fresh, marked temp folder next to ``final`` (created)."""
    tmp = _side_name(final, TMP_TAG)
    tmp.mkdir(parents=True)
    write_marker(tmp, kind, config_hash, files=[])
    return tmp


def seal(tmp: Path, kind: str, config_hash: str | None = None) -> None:
    """Record every file now in ``tmp`` in its marker (what a later rebuild may replace)."""
    write_marker(tmp, kind, config_hash, files=list_files(tmp))


def replace_dir(tmp: Path, final: Path, kind: str, what: str = "output") -> None:
    """Swap the finished ``tmp`` folder in at ``final``.

    ``final`` must be absent, empty, or a sealed lungbench ``kind`` folder holding only the
    files it lists (checked again here, under the caller's lock). The old folder is renamed
    aside, ``tmp`` renamed into place, then the old one deleted: ``final`` is never half-written.
    """
    check_owned(final, kind, what, replace=True)
    if final.exists():
        old = _side_name(final, OLD_TAG)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextmanager
def atomic_dir(final: str | os.PathLike, kind: str, what: str = "output") -> Iterator[Path]:
    """Build a folder in a marked temp folder; on success it is sealed and becomes ``final``.

    Refused up front (NotOwned) when ``final`` is a folder lungbench may not replace. On any
    exception the temp folder is deleted and ``final`` is untouched.
    """
    final = resolve_output(final)
    check_owned(final, kind, what, replace=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    tmp = make_temp_dir(final, kind)
    try:
        yield tmp
        seal(tmp, kind)
        replace_dir(tmp, final, kind, what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- clean
def owned_outputs(root: Path, max_depth: int = 4) -> list[Path]:
    """Marked lungbench folders below ``root`` (not descending into them, links not followed)."""
    root = Path(root)
    found = []
    for cur, dirs, _ in os.walk(root):
        depth = len(Path(cur).relative_to(root).parts)
        keep = []
        for d in sorted(dirs):
            p = Path(cur) / d
            if p.is_symlink():
                continue
            if read_marker(p) is not None:
                found.append(p)
            elif depth + 1 < max_depth:
                keep.append(d)
        dirs[:] = keep
    return found
