"""The ``lungbench`` command: one entry point beside the make targets.

    lungbench convert data=phantom out=work/data/phantom
    lungbench train backbone=r50_fpn dataset_dir=<converted> hydra.run.dir=<run dir>
    lungbench predict --run <run dir> --input <NIfTI file or folder> --out <dir>
    lungbench report --latest work/sweeps
    lungbench compare per_case.csv --out work/compare

Each subcommand is the program ``python -m <module>`` runs, with the remaining arguments
passed on unchanged (Hydra overrides for convert, train and sweep; options for download
and report): the module runs as ``__main__``, as under ``python -m``, so its own ``main``
parses them, prints its own ``--help`` and sets the exit status.
"""
from __future__ import annotations

import runpy
import sys

# name -> (module run as `python -m <module>`, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("converters.download", "fetch and verify the raw COVID-19-CT-Seg release (--dest DIR)"),
    "convert": ("converters.convert", "NIfTI volumes + masks -> COCO dataset (data=... out=...)"),
    "train": ("benchmark.train", "one training + evaluation run (Hydra overrides)"),
    "sweep": ("benchmark.sweep", "a multirun of train over backbones / folds (Hydra overrides)"),
    "predict": ("benchmark.predict", "a kept run's model on NIfTI volumes -> label NIfTIs + volumes.csv (--run --input --out)"),
    "report": ("reports.build", "tables, plots and HTML report of a sweep (<sweep_dir> | --latest DIR)"),
    "compare": ("reports.compare", "the report's paired tests on per-case scores from anywhere "
                "(PER_CASE.csv [--metric M] [--out DIR])"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: lungbench <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`lungbench <command> --help` shows that command's own options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if not args or args[0] not in COMMANDS:
        bad = f"unknown command {args[0]!r}\n" if args else "no command given\n"
        print(f"lungbench: {bad}{usage()}", file=sys.stderr)
        return 2
    name, rest = args[0], args[1:]
    module = COMMANDS[name][0]
    sys.argv = [f"lungbench {name}", *rest]  # runpy puts the module's file in argv[0], as -m does
    runpy.run_module(module, run_name="__main__", alter_sys=True)  # its sys.exit() propagates
    return 0


if __name__ == "__main__":
    sys.exit(main())
