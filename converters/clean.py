"""``make clean``: delete lungbench's own outputs below WORK, and nothing else.

    python -m converters.clean <work dir>

Only folders that hold lungbench's owner marker are deleted (datasets, generated phantoms,
runs, sweeps, reports, predictions), and only when they hold nothing but what lungbench wrote
there (their marker's list) and nobody is using them: otherwise nothing at all is deleted and
each such folder is named. Every other file stays, and so do folders that still hold anything.
Standard library only: it runs without the virtual environment.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

from contracts.fsutil import OutputBusy, in_use, output_lock, owned_outputs, stray_files


def refuse_reason(work: str) -> str | None:
    """Why ``work`` is not a folder to clean (None when it is)."""
    if not work.strip():
        return "WORK is empty: refusing to clean (pass WORK=<folder lungbench writes to>)"
    p = Path(work).expanduser().absolute()
    if p == Path(p.anchor) or p == Path.home().absolute():
        return f"WORK={work} is the file system root or your home folder: refusing to clean"
    return None


class CleanRefused(Exception):
    """Some marked folder may not be deleted (in use, or holding a user's files): nothing was."""


def _marked_below(folder: Path) -> list[Path]:
    """``folder`` and every lungbench folder inside it (a sweep's runs, its report)."""
    return [folder] + [q for p in owned_outputs(folder) for q in _marked_below(p)]


def refusals(outputs: list[Path], held: bool = False) -> list[str]:
    """Why each of ``outputs`` may not be deleted now (empty: all may). ``held``: this process
    holds their own locks already (the folders inside them are still checked)."""
    out = []
    for p in outputs:
        busy = [q for q in _marked_below(p)[1 if held else 0:] if in_use(q, readers=True)]
        if busy:
            out.append(f"{p}: in use right now ({busy[0]} is being written); left in place")
        stray = stray_files(p)
        if stray:
            more = f" (+{len(stray) - 5} more)" if len(stray) > 5 else ""
            out.append(f"{p}: holds files lungbench did not write: {', '.join(stray[:5])}{more}; "
                       "move them out first, then run make clean again")
    return out


def clean(work: Path) -> tuple[list[Path], list[Path]]:
    """Delete the marked outputs below ``work``; (deleted, left in place).

    Every folder is checked before any is deleted: one in use (a training, a prediction, a
    report) or holding files its marker does not list refuses the whole clean (CleanRefused,
    naming each), and nothing is deleted. The deletions then happen under each folder's lock."""
    work = Path(work)
    if not work.is_dir() or work.is_symlink():
        return [], []
    outputs = owned_outputs(work)
    why = refusals(outputs)
    if why:
        raise CleanRefused("\n".join(why))
    with ExitStack() as locks:
        for p in outputs:
            locks.enter_context(output_lock(p, "output"))
        why = refusals(outputs, held=True)  # a writer may have added files since the check
        if why:
            raise CleanRefused("\n".join(why))
        for p in outputs:
            shutil.rmtree(p)
    # folders between WORK and a deleted output that held nothing else go too (WORK itself,
    # and any folder with anything else in it, stay)
    kept = []
    for d in sorted({q for p in outputs for q in p.parents if work in q.parents},
                    key=lambda q: len(q.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            kept.append(d)
    return outputs, [k for k in kept if k.exists()]


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
    except (OutputBusy, CleanRefused) as e:
        print(f"clean: nothing deleted:\n{e}", file=sys.stderr)
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
