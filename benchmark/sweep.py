"""Sweeps: a Hydra multirun of `benchmark.train`, then a one-line summary of the runs' result.json.

    python -m benchmark.sweep +experiment=grid9 dataset_dir=<dir> hydra.sweep.dir=<dir> [overrides]

Every argument is a Hydra override, exactly as for `python -m benchmark.train -m`. The sweep

1. plans: composes the config with Hydra's own machinery and expands the basic sweeper's
   parameters (the experiment's `hydra.sweeper.params` plus comma/range overrides on the command
   line) into the list of runs, each with its run folder `<hydra.sweep.dir>/<hydra.sweep.subdir>`;
   the subdir is the experiment's (the backbone name) plus `_<key>=<value>` for every axis swept
   on the command line (`split.fold=0,1` -> `R50-FPN_fold=0`), so no two runs share a folder;
2. runs the multirun in this process through the train app's `@hydra.main` (with whichever
   launcher is configured: basic, joblib, submitit_slurm, submitit_local). Each run records its
   own success or failure in result.json and never raises, so one failed run does not stop the
   others; a run whose result.json says "ok" is skipped, so re-running a sweep resumes it;
3. reads every planned run's result.json (ok / failed / missing), writes `<sweep dir>/sweep.json`
   (the plan with each run's status, for reports: it names MISSING runs, which have no
   result.json), prints one summary line, e.g.
   `9 runs: 8 ok, 1 failed (R50-C4: FloatingPointError: Loss became infinite or NaN ...)`,
   and exits 1 if any run failed or is missing (2 if the sweep could not even be planned).

Runs describe themselves in result.json; folder names are computed from the config (never
parsed back). Planning: ``benchmark.sweeping.plan``; running and reading the runs:
``benchmark.sweeping.runner``.
"""

from __future__ import annotations

import sys

from benchmark.sweeping.plan import SweepError
from benchmark.sweeping.runner import sweep
from contracts.fsutil import NotOwned, OutputBusy


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    try:
        rc, _ = sweep(args)
    except (SweepError, NotOwned, OutputBusy) as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
