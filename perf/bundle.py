"""Which Python distributions a machine lacks to run lungbench, from the requirement graph.

The GPU machine this is for (perf/GPU.md) has its own Python with torch, torchvision and a
common scientific stack already installed, no network, and room for a small bundle only. So the
bundle holds exactly what lungbench's run-time requirements (``pyproject.toml``'s
dependencies and detectron2's, no dev extras) need beyond what such a machine has:

    closure(lungbench's requirements) - closure(the machine's packages) - lungbench itself

each closure followed through the metadata of the distributions installed where this runs
(``.venv``), requirement markers evaluated for the target Python on Linux x86_64. Only the
standard library and ``packaging`` are imported, so this also runs on the GPU machine before
anything is installed there::

    python -m perf.bundle pins [--python 3.12] [--has "torch numpy ..."]
        what the target lacks, one ``name==version`` a line (the version installed here;
        a requirement not installed here is printed as its specifier)
    python -m perf.bundle missing [--extra dev]
        what this Python lacks to run lungbench (names, space-separated; exit 0 either way)
    python -m perf.bundle outside
        installed distributions outside pyproject's ranges (a warning: they may still work)
"""

from __future__ import annotations

import argparse
from importlib import metadata
import platform
import re
import sys
import tomllib
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"

#: What the target GPU machine has installed (with whatever these require).
TARGET_HAS = ("torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib", "scikit-image",
              "pytest", "tqdm", "pyyaml", "requests", "jinja2", "tensorboard")
#: Never bundled: lungbench runs from its checkout; pip and the build tools are the machine's.
NOT_BUNDLED = ("lungbench", "pip", "setuptools", "wheel")
#: Built by benchmark/build_detectron2.py (no usable wheel on PyPI), required like the others.
DETECTRON2 = "detectron2"


def canon(name: str) -> str:
    """PEP 503 normalised name: Foo_Bar.baz -> foo-bar-baz."""
    return re.sub(r"[-_.]+", "-", name).lower()


def target_env(python: str) -> dict[str, str]:
    """Marker environment of CPython ``python`` (X.Y) on Linux x86_64."""
    return {"python_version": python, "python_full_version": f"{python}.0",
            "implementation_name": "cpython", "implementation_version": f"{python}.0",
            "platform_python_implementation": "CPython", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "extra": ""}


def lungbench_requirements(pyproject: Path = PYPROJECT, extras: Iterable[str] = ()) -> list[str]:
    """pyproject.toml's run-time dependencies (plus the ``extras`` asked for) and detectron2."""
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return reqs + [DETECTRON2]


def installed_requires(name: str) -> list[str] | None:
    """Requires-Dist of the installed distribution ``name``; None where it is not installed."""
    try:
        return metadata.distribution(name).requires or []
    except metadata.PackageNotFoundError:
        return None


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def closure(roots: Iterable[str], requires: Callable[[str], list[str] | None],
            env: dict[str, str] | None) -> dict[str, list[str]]:
    """Every distribution ``roots`` (requirement strings) need, directly or not: canonical
    name -> the requirement strings naming it. A distribution's own requirements come from
    ``requires(name)`` (None: unknown here, a leaf). Requirements whose marker is false in
    ``env`` (None: this interpreter) are left out; extras of a requirement are followed."""
    from packaging.requirements import Requirement

    seen: dict[str, list[str]] = {}
    todo: list[tuple[str, str]] = [(r, "") for r in roots]
    done_extras: set[tuple[str, str]] = set()
    while todo:
        text, extra = todo.pop()
        req = Requirement(text)
        if req.marker is not None:
            e = dict(env or {}, extra=extra)
            if not req.marker.evaluate(e):
                continue
        name = canon(req.name)
        seen.setdefault(name, []).append(text)
        for ex in [""] + sorted(req.extras):
            if (name, ex) in done_extras:
                continue
            done_extras.add((name, ex))
            for sub in requires(name) or []:
                todo.append((sub, ex))
    return seen


def lacks(has: Iterable[str], python: str, pyproject: Path = PYPROJECT,
          requires: Callable[[str], list[str] | None] = installed_requires) -> dict[str, list[str]]:
    """What a target with ``has`` installed lacks to run lungbench on CPython ``python``: the
    closure of lungbench's run-time requirements minus the closure of ``has`` minus
    NOT_BUNDLED. Name -> the requirement strings naming it."""
    env = target_env(python)
    need = closure(lungbench_requirements(pyproject), requires, env)
    there = closure(list(has), requires, env)
    skip = {canon(n) for n in NOT_BUNDLED}
    return {n: reqs for n, reqs in sorted(need.items()) if n not in there and n not in skip}


def pins(lacking: dict[str, list[str]], version: Callable[[str], str | None] = installed_version) -> list[str]:
    """``name==version`` (the version installed here: what the tests run against) for each
    lacking distribution; one not installed here is given as its requirements' specifiers."""
    from packaging.requirements import Requirement

    out = []
    for name, reqs in lacking.items():
        v = version(name)
        if v is not None:
            out.append(f"{name}=={v}")
        else:
            spec = ",".join(sorted({str(s) for r in reqs for s in Requirement(r).specifier}))
            out.append(f"{name}{spec}")
    return out


def missing(extras: Iterable[str] = (), pyproject: Path = PYPROJECT) -> list[str]:
    """The distributions this Python lacks to run lungbench (with ``extras``), found through
    what it has installed: a distribution whose own requirements are unknown (not installed)
    is listed, and what it needs shows once it is there."""
    need = closure(lungbench_requirements(pyproject, extras), installed_requires, None)
    skip = {canon(n) for n in NOT_BUNDLED}
    return sorted(n for n in need if n not in skip and installed_version(n) is None)


def outside(pyproject: Path = PYPROJECT) -> list[str]:
    """Installed distributions lungbench names whose version is outside pyproject's range."""
    from packaging.requirements import Requirement

    out = []
    for text in lungbench_requirements(pyproject):
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        v = installed_version(req.name)
        if v is not None and req.specifier and not req.specifier.contains(v, prereleases=True):
            out.append(f"{req.name} {v} (pyproject.toml: {req.specifier})")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pins", help="what the target lacks, name==version a line")
    p.add_argument("--python", default="%d.%d" % sys.version_info[:2], help="target CPython X.Y")
    p.add_argument("--has", default=" ".join(TARGET_HAS),
                   help="the target's installed distributions (space-separated)")
    m = sub.add_parser("missing", help="what this Python lacks (space-separated names)")
    m.add_argument("--extra", action="append", default=[], help="an extra of pyproject.toml too")
    sub.add_parser("outside", help="installed versions outside pyproject's ranges")
    args = ap.parse_args(argv)
    try:
        import packaging.requirements  # noqa: F401
    except ImportError:
        print(f"perf.bundle: {platform.python_implementation()} {sys.executable} has no `packaging` "
              "(it reads requirement markers); install it first", file=sys.stderr)
        return 2
    if args.cmd == "pins":
        if re.fullmatch(r"3\.\d+", args.python) is None:
            ap.error(f"--python {args.python!r}: expected X.Y, e.g. 3.12")
        for line in pins(lacks(args.has.split(), args.python)):
            print(line)
    elif args.cmd == "missing":
        print(" ".join(missing(args.extra)))
    else:
        for line in outside():
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
