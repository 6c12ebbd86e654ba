"""How the Makefile hands what a user typed to lungbench's programs: as arguments, never as code.

    python3 -m converters.launch <target> [--python PY] [--print]

make exports each public variable as ``LB_<NAME>`` (its raw text: make does not expand it
either) and ``LB_GIVEN`` (the names given on make's command line); this module turns them into
one program's argument list and runs it without a shell. A path reaches Hydra as one quoted
override value (``hydra_quote``: a comma, a ``${...}``, a quote or a space stays part of the
path), reaches argparse as ``--opt=value`` (a leading ``-`` stays a path), and ``ARGS`` is
split into words as a shell splits them (quotes respected) but never evaluated. A variable
given to a target that does not use it is refused (exit 2) instead of silently ignored.
``--print`` (make -n) prints the command instead of running it.

Standard library only: ``make clean`` and ``make -n`` run it without the virtual environment.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

PUBLIC_VARS = ("WORK", "DATA", "DATA_ROOT", "DATA_OUT", "BACKBONE", "SOLVER", "RUN_DIR",
               "EXPERIMENT", "SWEEP_DIR", "SWEEP", "RUN", "INPUT", "OUT", "ARGS", "DRY")
# Variables that only shape another one's default (DATA_OUT = WORK/data/DATA, DATA from DATA_ROOT)
_DATA_OUT_INPUTS = {"WORK", "DATA", "DATA_ROOT", "DATA_OUT"}
# target -> the public variables it uses (every other one given on the command line is refused)
USES: dict[str, set[str]] = {
    "data": _DATA_OUT_INPUTS | {"ARGS"},
    "download": {"WORK", "DATA_ROOT", "ARGS"},
    "train": _DATA_OUT_INPUTS | {"BACKBONE", "SOLVER", "RUN_DIR", "ARGS"},
    "sweep": _DATA_OUT_INPUTS | {"EXPERIMENT", "SOLVER", "SWEEP_DIR", "ARGS"},
    "predict": {"RUN", "INPUT", "OUT", "ARGS"},
    "report": {"WORK", "SWEEP", "ARGS"},
    "test": {"ARGS"},
    "test-fast": {"ARGS"},
    "perf": {"ARGS"},
    "gpu-check": {"DRY", "ARGS"},
    "clean": {"WORK"},
    "demo": {"WORK"},  # the demo's settings are the demo: checked only (`--check`)
    "help": set(), "setup": set(), "gpu-bundle": set(),  # checked; gpu-bundle runs perf/wheels.sh
    "reproduce": {"WORK", "DATA_ROOT", "DATA_OUT", "SWEEP_DIR", "ARGS"},
}
# Why a variable means nothing to a target, where a plain "not used" would leave the user stuck
HINTS = {
    ("sweep", "BACKBONE"): "a sweep runs its experiment's backbones; one backbone: "
                           "ARGS='backbone=r50_fpn', or make train",
    ("sweep", "RUN_DIR"): "a sweep's runs go into SWEEP_DIR",
    ("train", "SWEEP_DIR"): "make train writes RUN_DIR",
    ("train", "EXPERIMENT"): "experiments are sweeps: make sweep EXPERIMENT=...",
    ("report", "SWEEP_DIR"): "make report reads SWEEP=<sweep dir>",
}


class LaunchError(Exception):
    """A value cannot be handed over as typed (the message names the variable and the fix)."""


@dataclass
class Values:
    """The public variables as make holds them (raw text) and which the user gave."""

    raw: dict[str, str] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Values":
        env = os.environ if env is None else env
        return cls({v: env.get(f"LB_{v}", "") for v in PUBLIC_VARS},
                   set(env.get("LB_GIVEN", "").split()))

    def text(self, name: str) -> str:
        return self.raw.get(name, "").strip()

    def path(self, name: str, required: bool = True) -> str:
        """``name``'s value as one path; refused when empty (if required) or unusable."""
        value = self.text(name)
        if not value:
            if required:
                raise LaunchError(f"{name} is empty: pass {name}=<path>")
            return ""
        if re.search(r"[\x00-\x1f\x7f]", value):
            raise LaunchError(f"{name}={value!r} holds a control character (a newline?): not a "
                              "usable path; pass the folder's name as it is")
        return value

    def args(self) -> list[str]:
        """ARGS split as a shell splits words (quotes respected), never evaluated."""
        try:
            return shlex.split(self.raw.get("ARGS", ""), comments=False, posix=True)
        except ValueError as e:
            raise LaunchError(f"ARGS={self.raw.get('ARGS', '')!r}: {e} (quote each override "
                              "whole, e.g. ARGS=\"seed=1 'dataset_name=my data'\")") from None


def hydra_quote(value: str) -> str:
    """``value`` as a Hydra override value that Hydra and OmegaConf hand back unchanged.

    Single-quoted (a comma, space, ``=`` or bracket stays text, not a sweep or list); a quote
    and the backslashes before it are escaped as Hydra's grammar wants; ``${`` is escaped for
    OmegaConf, which would otherwise resolve it as an interpolation. A plain path (letters,
    digits, ``_.-`` and at least one ``/``: never a number, bool or null) stays bare, readable."""
    if re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*/[A-Za-z0-9_./-]*|/[A-Za-z0-9_./-]*", value):
        return value
    value = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + r"\${", value)
    value = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + r"\'", value)
    value = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, value)
    return f"'{value}'"


def _choice(vals: Values, name: str) -> str:
    """A config-group choice (backbone, solver, experiment, data): a plain name only."""
    value = vals.text(name)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", value):
        raise LaunchError(f"{name}={value!r} is not a config name: use one of the file names "
                          "in conf/ (`make help` lists the experiments)")
    return value


def check_given(target: str, vals: Values) -> None:
    """Refuse a variable given on the command line that ``target`` would silently ignore."""
    unused = sorted(vals.given - USES.get(target, set()) - {"PYTHON_SYS"})
    if unused:
        why = "; ".join(f"{v}: {HINTS.get((target, v), f'make {target} does not use it')}"
                        for v in unused)
        raise LaunchError(f"does not take {', '.join(unused)} ({why})")


def command(target: str, vals: Values, python: str) -> list[str]:
    """The argument list ``make <target>`` runs (no shell ever sees it)."""
    check_given(target, vals)
    py = [python, "-m"]
    if target == "data":
        root = vals.path("DATA_ROOT", required=False)
        return py + ["converters.convert", f"data={_choice(vals, 'DATA')}",
                     *([f"data.root={hydra_quote(root)}"] if root else []),
                     f"out={hydra_quote(vals.path('DATA_OUT'))}", *vals.args()]
    if target == "download":
        dest = vals.path("DATA_ROOT", required=False) or f"{vals.path('WORK')}/raw/covid19_ct_seg"
        return py + ["converters.download", f"--dest={dest}", *vals.args()]
    if target == "train":
        return py + ["benchmark.train", f"backbone={_choice(vals, 'BACKBONE')}",
                     f"solver={_choice(vals, 'SOLVER')}",
                     f"dataset_dir={hydra_quote(vals.path('DATA_OUT'))}",
                     f"hydra.run.dir={hydra_quote(vals.path('RUN_DIR'))}", *vals.args()]
    if target == "sweep":
        # the experiment chooses its solver (table3: paper); SOLVER= on the command line wins
        solver = [f"solver={_choice(vals, 'SOLVER')}"] if "SOLVER" in vals.given else []
        return py + ["benchmark.sweep", f"+experiment={_choice(vals, 'EXPERIMENT')}",
                     f"dataset_dir={hydra_quote(vals.path('DATA_OUT'))}",
                     f"hydra.sweep.dir={hydra_quote(vals.path('SWEEP_DIR'))}", *solver,
                     *vals.args()]
    if target == "predict":
        missing = [v for v in ("RUN", "INPUT", "OUT") if not vals.text(v)]
        if missing:
            raise LaunchError(f"make predict needs RUN=<run dir trained with "
                              f"ARGS=keep_checkpoint=true> INPUT=<NIfTI file or folder> "
                              f"OUT=<new folder> ({', '.join(missing)} missing)")
        return py + ["benchmark.predict", f"--run={vals.path('RUN')}",
                     f"--input={vals.path('INPUT')}", f"--out={vals.path('OUT')}", *vals.args()]
    if target == "report":
        sweep = vals.path("SWEEP", required=False)
        if not sweep:
            return py + ["reports.build", *vals.args(), f"--latest={vals.path('WORK')}/sweeps"]
        return py + ["reports.build", *vals.args(), "--", sweep]  # `--`: a name may start with -
    if target in ("test", "test-fast"):
        tier = ["-m", "not slow"] if target == "test-fast" else []
        return py + ["pytest", *tier, *vals.args()]
    if target == "perf":
        return py + ["perf.run", *vals.args()]
    if target == "gpu-check":
        return ["bash", "perf/gpu_check.sh", *(["--dry-run"] if vals.text("DRY") else []),
                *vals.args()]
    if target == "gpu-bundle":
        return ["bash", "perf/wheels.sh"]
    if target == "clean":
        return py + ["converters.clean", "--", vals.raw.get("WORK", "")]
    raise LaunchError(f"unknown target {target!r}")


# The paper's protocol (make reproduce): the release, its conversion, Table 3's nine rows from
# the zoo's COCO checkpoints with the paper's solver over the five official folds, the report.
REPRODUCE_SPLIT = "split=ma2021_5fold split.fold=0,1,2,3,4"
REPRODUCE_NOTES = (
    "downloads: the four archives of Zenodo record 3757476 (sha256-verified; the CT archive is "
    "the large one, about 1 GB), then the COCO checkpoints of the nine Table 3 rows from "
    "detectron2's model zoo (first use only, cached)",
    "runs: 9 rows x 5 folds = 45 trainings of 5000 iterations (solver=paper, weights=zoo)",
    "expected time per GPU: not yet measured (perf/GPU.md's check measures s/iter per backbone)",
)


def reproduce_steps(vals: Values, python: str) -> list[tuple[str, list[str]]]:
    """The commands of ``make reproduce``, in order: (what, argument list)."""
    check_given("reproduce", vals)
    work = vals.path("WORK")
    root = vals.path("DATA_ROOT", required=False) or f"{work}/raw/covid19_ct_seg"
    out = vals.path("DATA_OUT") if "DATA_OUT" in vals.given else f"{work}/data/covid19_ct_seg"
    sweep = vals.path("SWEEP_DIR") if "SWEEP_DIR" in vals.given else f"{work}/sweeps/table3"
    extra = vals.args()  # checked before anything runs
    step = Values({**vals.raw, "DATA_ROOT": root, "DATA_OUT": out, "DATA": "covid19_ct_seg",
                   "EXPERIMENT": "table3", "SWEEP_DIR": sweep, "SWEEP": sweep}, set())
    plain = Values({**step.raw, "ARGS": ""}, set())
    sweep_vals = Values({**step.raw, "ARGS": f"{REPRODUCE_SPLIT} {shlex.join(extra)}"}, set())
    return [("download and verify the release", command("download", plain, python)),
            ("convert it to COCO", command("data", plain, python)),
            ("train and evaluate Table 3's rows over the five folds",
             command("sweep", sweep_vals, python)),
            ("build the report", command("report", plain, python))]


def _wait(argv: list[str], env: dict[str, str]) -> int:
    """Run one step; Ctrl-C reaches it too (same process group) and it records the interrupt
    before exiting, so wait for it rather than kill it."""
    proc = subprocess.Popen(argv, env=env)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


def reproduce(vals: Values, python: str, dry: bool) -> int:
    steps = reproduce_steps(vals, python)
    print("make reproduce: the paper's protocol, step by step (each skips what is done):")
    for i, (what, argv) in enumerate(steps, 1):
        print(f"  {i}. {what}:\n     {shlex.join(argv)}")
    for note in REPRODUCE_NOTES:
        print(f"  - {note}")
    if dry:
        return 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    rc = 0
    for what, argv in steps:
        code = _wait(argv, env)
        if code and what.startswith("train"):
            rc = code  # failed runs are results: the report still shows them
        elif code:
            print(f"make reproduce: {what} failed (exit {code}); stopped there", file=sys.stderr)
            return code
    return rc


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    target = args[0] if args else ""
    python = args[args.index("--python") + 1] if "--python" in args else sys.executable
    vals = Values.from_env()
    try:
        if target == "reproduce":
            return reproduce(vals, python, "--print" in args)
        if "--check" in args:  # a recipe of make's own steps: only the variables are checked
            check_given(target, vals)
            return 0
        argv_ = command(target, vals, python)
    except LaunchError as e:
        print(f"make {target}: {e}", file=sys.stderr)
        return 2
    if "--print" in args:  # make -n: what would run
        print(shlex.join(argv_))
        return 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    if target in ("gpu-check", "gpu-bundle"):
        env["PYTHON"] = python
    sys.stdout.flush()
    # exec, not a child: Ctrl-C and SIGTERM reach the program itself, its exit status is make's
    os.execvpe(argv_[0], argv_, env)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
