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

Runs describe themselves in result.json; folder names are computed here from the config
(never parsed back).

Hydra internals (hence the exact hydra-core pin in pyproject.toml). The plan must be the list
of jobs Hydra's basic sweeper will launch, and the run must use the same config folder;
Hydra's public API has no call for either:

* expanding a sweep: the public sweeper interface (`hydra.plugins.sweeper.Sweeper`) has only
  `setup()` and `sweep()`, and `BasicSweeper.sweep()` launches the jobs (and writes
  `<sweep dir>/multirun.yaml`); it has no dry run. The expansion itself,
  `BasicSweeper.split_arguments` (the experiment's `hydra.sweeper.params`, then the command
  line; a later override of a key replaces an earlier one in place; the product of the
  values), lives in `hydra._internal.core_plugins.basic_sweeper`. The public override parser
  (`hydra.core.override_parser.overrides_parser.OverridesParser`) gives each override's values,
  but the product rule would then be a copy of the sweeper's, free to drift from it;
* composing as a multirun does: `hydra.compose()` composes in RUN mode only (it refuses
  `a=1,2`), and the master config of a multirun (RunMode.MULTIRUN) and each job's config
  (`load_sweep_config`) come from the `Hydra` object of `hydra._internal.hydra`, built with
  `hydra._internal.utils.create_config_search_path` for an explicit config folder;
* running a multirun in this process over that folder: `@hydra.main` finds its config folder
  relative to the app's module (an imported app would look for a `conf` Python package); only
  `Hydra.multirun` takes the folder as given.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.hydra_callbacks import register_launchers
from contracts.fsutil import NotOwned, OutputBusy, check_owned, claim, output_lock
from contracts.result import ResultUnreadable, read_result
from contracts.sweep import KIND as SWEEP_KIND
from contracts.sweep import write_plan

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
CONFIG_NAME = "train"
TRAIN_MODULE = "benchmark.train"

class SweepError(RuntimeError):
    """The sweep cannot be planned (bad override, unknown experiment, unsupported sweeper)."""


@dataclass
class PlannedRun:
    label: str                 # the run's folder name below the sweep dir, e.g. "R50-FPN_fold=1"
    run_dir: str               # absolute
    overrides: list[str]       # the job's overrides, as Hydra passes them to the run
    status: str = "planned"    # after collect(): ok | failed | missing
    error: str | None = None   # "Type: message" of a failed run, or why result.json is unreadable
    # the run's resolved config as benchmark.run records it (None if it cannot be computed here);
    # an "ok" result.json with a different config is not this run's result
    config: dict | None = field(default=None, repr=False)
    # contracts.identity.identity(config, dataset fingerprint): what the report matches on
    identity: dict | None = field(default=None, repr=False)


@dataclass
class SweepPlan:
    sweep_dir: str                               # absolute
    overrides: list[str]                         # what the multirun is called with
    runs: list[PlannedRun] = field(default_factory=list)


# ----------------------------------------------------------------------------- planning
def _short(key: str) -> str:
    """`split.fold` -> `fold`, `experiment/table3_rows` -> `table3_rows` (for folder names)."""
    return key.replace("/", ".").split(".")[-1]


def plan_sweep(overrides: list[str], conf_dir: Path = CONF_DIR, config_name: str = CONFIG_NAME) -> SweepPlan:
    """Expand the sweep into runs without running anything (Hydra's basic sweeper semantics)."""
    # Hydra internals (see the module docstring): the same calls its multirun makes.
    from hydra import version
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict, read_write
    from omegaconf.errors import OmegaConfBaseException

    version.setbase("1.3")
    register_launchers(conf_dir)  # hydra/launcher=joblib etc.: lungbench's settings
    GlobalHydra.instance().clear()
    hyd = Hydra.create_main_hydra2(task_name=config_name,
                                   config_search_path=create_config_search_path(str(conf_dir)))
    try:
        cfg = hyd.compose_config(config_name, list(overrides), run_mode=RunMode.MULTIRUN,
                                 with_log_configuration=False)
        sweeper = str(cfg.hydra.sweeper.get("_target_", ""))
        if not sweeper.endswith("BasicSweeper"):
            raise SweepError(f"hydra/sweeper {sweeper!r}: only Hydra's basic sweeper can be planned")
        parser = OverridesParser.create(config_loader=hyd.config_loader)
        cli = parser.parse_overrides(list(overrides))
        params = {str(k): str(v) for k, v in (cfg.hydra.sweeper.params or {}).items()}
        param_keys = {parser.parse_override(f"{k}={v}").key_or_group for k, v in params.items()}

        # Folder per run: the configured subdir plus every axis swept on the command line
        # (the experiment's own axes are already in its subdir), unless the user set one.
        extra = list(overrides)
        if not any(o.key_or_group == "hydra.sweep.subdir" for o in cli):
            subdir = str(OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"])
            for o in cli:
                if o.is_sweep_override() and o.key_or_group not in param_keys and o.key_or_group != "backbone":
                    key = o.key_or_group
                    is_group = hyd.config_loader.repository.group_exists(key)
                    value = f"${{hydra:runtime.choices.{key}}}" if is_group else f"${{{key}}}"
                    subdir += f"_{_short(key)}={value}"
            extra.append(f"hydra.sweep.subdir='{subdir}'")
        # Resolve the sweep dir once (a ${now:} default would differ between plan and run).
        HydraConfig.instance().set_config(cfg)
        sweep_dir = Path(str(cfg.hydra.sweep.dir)).expanduser()
        sweep_dir = sweep_dir if sweep_dir.is_absolute() else Path.cwd() / sweep_dir
        extra = [o for o in extra if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]
        # hydra.mode=MULTIRUN is what `-m` adds: the run returns its status instead of exiting.
        quoted = str(sweep_dir).replace("\\", "\\\\").replace("'", "\\'")  # Hydra's quoted-string escapes
        extra += [f"hydra.sweep.dir='{quoted}'", "hydra.mode=MULTIRUN"]
        cfg = hyd.compose_config(config_name, extra, run_mode=RunMode.MULTIRUN, with_log_configuration=False)

        jobs = BasicSweeper.split_arguments(parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + extra),
                                            None)[0]
        plan = SweepPlan(sweep_dir=str(sweep_dir), overrides=extra)
        for num, job in enumerate(jobs):
            job_cfg = hyd.config_loader.load_sweep_config(cfg, list(job))
            with open_dict(job_cfg.hydra.job):
                job_cfg.hydra.job.num = num
            HydraConfig.instance().set_config(job_cfg)
            label = str(job_cfg.hydra.sweep.subdir)
            with read_write(job_cfg.hydra.runtime):  # what Hydra sets before it calls the run
                job_cfg.hydra.runtime.output_dir = str(sweep_dir / label)
            HydraConfig.instance().set_config(job_cfg)
            config = _run_config(job_cfg, label)
            plan.runs.append(PlannedRun(label=label, run_dir=str(sweep_dir / label), overrides=list(job),
                                        config=config, identity=_identity(config)))
        dirs = [r.run_dir for r in plan.runs]
        dupes = sorted({d for d in dirs if dirs.count(d) > 1})
        if dupes:
            raise SweepError(f"several runs would share a folder ({', '.join(Path(d).name for d in dupes)}): "
                             "set hydra.sweep.subdir to tell them apart")
        return plan
    except (HydraException, OmegaConfBaseException) as e:
        raise SweepError(f"cannot plan the sweep: {type(e).__name__}: {e}") from e
    finally:
        GlobalHydra.instance().clear()


def _identity(config: dict | None) -> dict | None:
    if config is None:
        return None
    from contracts.dataset import fingerprint as dataset_fingerprint
    from contracts.identity import identity

    split = config.get("split") or {}
    fp = dataset_fingerprint(config.get("dataset_dir") or "", split.get("scheme"), split.get("fold", 0))
    return identity(config, fp)


def _run_config(job_cfg, label: str) -> dict:
    """The config the run will record in result.json (benchmark.run's own ``run_config``).

    Called with HydraConfig set to the job's config, as inside the run. A config that cannot
    be resolved here cannot be resolved by the run either: the run computes it before anything
    else, outside the part that records a failure, so it would stop the whole multirun. Such a
    config is the user's to fix: SweepError (exit 2) names the run before any run starts.
    Anything else is a bug; it propagates, with a note naming the run.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from benchmark import run as run_mod

    cfg = OmegaConf.masked_copy(job_cfg, [k for k in job_cfg if k != "hydra"])
    try:
        return run_mod.run_config(cfg)
    # OmegaConf's errors, all of them the config's: a missing mandatory value (dataset_dir=???),
    # an interpolation to a missing key, a resolver that fails (${lungbench_jobs:...}), a value
    # of the wrong type
    except OmegaConfBaseException as e:
        raise SweepError(f"run {label}: its config cannot be resolved: {type(e).__name__}: "
                         f"{str(e).strip()}") from e
    except Exception as e:
        e.add_note(f"benchmark.sweep: while computing the config of the planned run {label}")
        raise


# ----------------------------------------------------------------------------- collecting
def read_status(run_dir: Path, config: dict | None = None) -> tuple[str, str | None]:
    """(status, error) of one run from its result.json: ok | failed | missing.

    With `config`, an "ok" result recorded with a different config counts as failed: the run
    refuses to redo it (a folder holds one run), so the sweep's own settings never ran.
    """
    try:
        found = read_result(run_dir)
    except ResultUnreadable as e:
        return "failed", str(e)
    if found is None:
        return "missing", None
    res = found.data
    if res.get("status") == "ok":
        if config is not None and isinstance(res.get("config"), dict):
            from contracts.dataset import fingerprint as dataset_fingerprint
            from contracts.identity import stale_reasons

            split = config.get("split") or {}
            fp = dataset_fingerprint(config.get("dataset_dir") or "", split.get("scheme"), split.get("fold", 0))
            diff = stale_reasons(res, config, fp)
            if diff:
                return "failed", (f"StaleResult: folder holds a finished run that is not this one "
                                  f"({', '.join(diff[:5])}{', ...' if len(diff) > 5 else ''})")
        return "ok", None
    err = res.get("error") or {}
    if isinstance(err, dict):
        msg = f"{err.get('type') or 'Error'}: {err.get('message') or ''}".strip().rstrip(":")
    else:
        msg = str(err)
    return "failed", msg or f"status {res.get('status')!r}"


def collect(plan: SweepPlan) -> SweepPlan:
    for run in plan.runs:
        run.status, run.error = read_status(Path(run.run_dir), run.config)
    return plan


def summary_line(runs: list[PlannedRun], max_message: int = 90) -> str:
    """`9 runs: 8 ok, 1 failed (R50-C4: FloatingPointError: ...)` (+ `, 1 missing (X101-C4)`)."""
    ok = [r for r in runs if r.status == "ok"]
    failed = [r for r in runs if r.status == "failed"]
    missing = [r for r in runs if r.status == "missing"]

    def short(msg: str | None) -> str:
        first = (msg or "").strip().splitlines()[0] if (msg or "").strip() else "no error recorded"
        return first if len(first) <= max_message else first[: max_message - 3] + "..."

    line = f"{len(runs)} run{'s' if len(runs) != 1 else ''}: {len(ok)} ok"
    if failed:
        line += f", {len(failed)} failed (" + "; ".join(f"{r.label}: {short(r.error)}" for r in failed) + ")"
    if missing:
        line += f", {len(missing)} missing (" + ", ".join(r.label for r in missing) + ")"
    return line


def write_sweep_file(plan: SweepPlan, hydra_rc: int | None) -> Path:
    """`<sweep dir>/sweep.json`: the planned runs and their status (contracts.sweep)."""
    runs = [{"label": r.label, "run_dir": os.path.relpath(r.run_dir, plan.sweep_dir),
             "overrides": r.overrides, "status": r.status, "error": r.error,
             "identity": (r.identity or {}).get("hash"), "group": (r.identity or {}).get("group"),
             # what a report shows for a planned run that never wrote its result.json
             "backbone": ((r.config or {}).get("backbone") or {}).get("name"),
             "in_zoo": ((r.config or {}).get("backbone") or {}).get("in_zoo")}
            for r in plan.runs]
    return write_plan(plan.sweep_dir, runs, overrides=plan.overrides, hydra_exit_code=hydra_rc,
                      summary=summary_line(plan.runs))


# ----------------------------------------------------------------------------- running
def run_multirun(overrides: list[str], module: str = TRAIN_MODULE, conf_dir: Path = CONF_DIR,
                 config_name: str = CONFIG_NAME) -> int:
    """Hydra multirun of `<module>.main`'s task function in this process; 0, or 1 if Hydra failed.

    This is what `@hydra.main` does for `-m`, with the config folder given explicitly (an
    imported app would otherwise look for a `conf` Python package). In-process, the task
    function comes from an importable module, which the joblib and submitit launchers pickle.
    """
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    app = importlib.import_module(module)
    task_function = getattr(app.main, "__wrapped__", app.main)  # the undecorated function
    version.setbase("1.3")
    register_launchers(conf_dir)
    GlobalHydra.instance().clear()
    try:
        hyd = Hydra.create_main_hydra2(task_name=config_name,
                                       config_search_path=create_config_search_path(str(conf_dir)))
        hyd.multirun(config_name=config_name, task_function=task_function, overrides=list(overrides))
        return 0
    except SystemExit as e:  # a run that exits instead of returning: the others are summarised
        print(f"sweep: a run exited with {e.code}; the sweep stopped there", file=sys.stderr)
        return e.code if isinstance(e.code, int) and e.code else 1
    except Exception as e:  # noqa: BLE001 - a launcher/Hydra failure: the runs still get summarised
        print(f"sweep: Hydra multirun failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        GlobalHydra.instance().clear()


def claim_outputs(plan: SweepPlan) -> None:
    """The sweep folder must be new, empty or a lungbench sweep (then marked), and every run
    folder new, empty or a lungbench run: checked before Hydra writes anything (NotOwned)."""
    for r in plan.runs:
        if Path(r.run_dir).exists():
            check_owned(r.run_dir, "run", f"the run folder of {r.label}")
    claim(plan.sweep_dir, SWEEP_KIND, "SWEEP_DIR (hydra.sweep.dir)")


def sweep(overrides: list[str], module: str = TRAIN_MODULE, conf_dir: Path = CONF_DIR) -> tuple[int, SweepPlan]:
    """Plan, run, collect; (exit code, plan with statuses). Raises SweepError if unplannable,
    NotOwned if an output folder is not lungbench's, OutputBusy if the sweep is running already."""
    plan = plan_sweep(overrides, conf_dir)
    claim_outputs(plan)
    with output_lock(plan.sweep_dir, "SWEEP_DIR"):
        return _sweep_locked(plan, module, conf_dir)


def _sweep_locked(plan: SweepPlan, module: str, conf_dir: Path) -> tuple[int, SweepPlan]:
    collect(plan)
    write_sweep_file(plan, None)  # the plan is on disk before any run starts (reports read it)
    done = sum(r.status == "ok" for r in plan.runs)
    print(f"sweep: {len(plan.runs)} runs in {plan.sweep_dir}"
          + (f" ({done} already ok: skipped)" if done else ""), flush=True)
    try:
        rc = run_multirun(plan.overrides, module, conf_dir)
    except KeyboardInterrupt:  # a run re-raises Ctrl-C / SIGTERM after recording it: summarise, stop
        rc = 130
    collect(plan)
    write_sweep_file(plan, rc)
    for r in plan.runs:
        if r.status != "ok":
            print(f"  {r.status.upper()}: {r.label}  {Path(r.run_dir) / 'result.json'}"
                  + (f"  {r.error.splitlines()[0]}" if r.error else ""))
    ok = bool(plan.runs) and all(r.status == "ok" for r in plan.runs)
    if rc and ok:  # every run says ok but Hydra failed after them (e.g. a launcher error)
        print(f"sweep: Hydra exited with {rc} although every run is ok")
    print(summary_line(plan.runs), flush=True)
    return (rc if rc == 130 else 0 if ok and not rc else 1), plan


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
