"""``make clean``: delete lungbench's own outputs below WORK, and nothing else.

    python -m converters.clean <work dir>

Only folders that hold lungbench's owner marker are deleted (datasets, generated phantoms,
runs, sweeps, reports, downloads); every other file stays, and so do folders that still
hold anything after that. Standard library only: it runs without the virtual environment.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .fsutil import OutputBusy, output_lock, owned_outputs, read_marker


def refuse_reason(work: str) -> str | None:
    """Why ``work`` is not a folder to clean (None when it is)."""
    if not work.strip():
        return "WORK is empty: refusing to clean (pass WORK=<folder lungbench writes to>)"
    p = Path(work).expanduser().absolute()
    if p == Path(p.anchor) or p == Path.home().absolute():
        return f"WORK={work} is the file system root or your home folder: refusing to clean"
    return None


def clean(work: Path) -> tuple[list[Path], list[Path]]:
    """Delete the marked outputs below ``work``; (deleted, left in place)."""
    work = Path(work)
    if not work.is_dir() or work.is_symlink():
        return [], []
    deleted = []
    for p in owned_outputs(work):
        with output_lock(p, "output"):
            if read_marker(p) is not None:
                shutil.rmtree(p)
                deleted.append(p)
    # folders between WORK and a deleted output that held nothing else go too (WORK itself,
    # and any folder with anything else in it, stay)
    kept = []
    for d in sorted({q for p in deleted for q in p.parents if work in q.parents},
                    key=lambda q: len(q.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            kept.append(d)
    return deleted, [k for k in kept if k.exists()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m converters.clean", description=__doc__.split("\n\n")[0])
    ap.add_argument("work", help="the folder lungbench writes its outputs to (make's WORK)")
    a = ap.parse_args(argv)
    why = refuse_reason(a.work)
    if why:
        print(f"clean: {why}", file=sys.stderr)
        return 2
    try:
        deleted, kept = clean(Path(a.work))
    except OutputBusy as e:
        print(f"clean: {e}", file=sys.stderr)
        return 1
    for p in deleted:
        print(f"clean: deleted {p}")
    for p in kept:
        print(f"clean: kept {p} (holds files lungbench did not make)")
    if not deleted:
        print(f"clean: no lungbench output under {a.work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
