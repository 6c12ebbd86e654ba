"""Small filesystem helpers: atomic directory builds and streaming sha256."""
from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(final: Path) -> None:
    """Delete ``<final>.tmp-<pid>`` / ``.old-<pid>`` folders left by runs that died.

    Folders of a process that is still alive (a concurrent run) are left alone.
    """
    parent = final.parent
    if not parent.is_dir():
        return
    for p in parent.glob(f"{final.name}.*-*"):
        kind, _, pid = p.name[len(final.name) + 1:].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` folder to ``final``, replacing an older ``final``.

    ``os.replace`` cannot replace a non-empty folder, so the old one is first renamed
    aside; in between, ``final`` does not exist (never half-written).
    """
    if final.exists() or final.is_symlink():
        if not final.is_dir():
            raise NotADirectoryError(f"{final} exists and is not a folder")
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temp folder next to ``final``; on success it becomes ``final``.

    On any exception the temp folder is deleted and ``final`` is untouched.
    """
    final = Path(final)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)
