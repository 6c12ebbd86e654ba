"""Running a sweep: claim its folders, run Hydra's multirun of the train app in this process,
read how every planned run ended and write ``<sweep dir>/sweep.json`` (contracts.sweep)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from benchmark.sweeping.hydra_callbacks import register_launchers
from benchmark.sweeping.plan import CONF_DIR, CONFIG_NAME, TRAIN_MODULE, PlannedRun, SweepPlan, plan_sweep
from contracts.fsutil import check_owned, claim, output_lock
from contracts.identity import stale_reasons
from contracts.result import FILENAME as RESULT_FILE
from contracts.result import ResultUnreadable, read_result
from contracts.sweep import KIND as SWEEP_KIND
from contracts.sweep import write_plan


def read_status(run_dir: Path, config: dict | None = None,
                fingerprint: dict | None = None) -> tuple[str, str | None]:
    """(status, error) of one run from its result.json: ok | failed | missing.

    With `config` (and `fingerprint`, of the run's dataset split: contracts.dataset), an "ok"
    result recorded with a different config or dataset counts as failed: the run refuses to
    redo it (a folder holds one run), so the sweep's own settings never ran.
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
            diff = stale_reasons(res, config, fingerprint)
            if diff:
                return "failed", (f"StaleResult: folder holds a finished run that is not this one "
                                  f"({', '.join(diff[:5])}{', ...' if len(diff) > 5 else ''})")
        return "ok", None
    err = res.get("error") or {}
    msg = (f"{err.get('type') or 'Error'}: {err.get('message') or ''}".strip().rstrip(":")
           if isinstance(err, dict) else str(err))
    return "failed", msg or f"status {res.get('status')!r}"


def read_statuses(plan: SweepPlan) -> SweepPlan:
    """Every planned run's status and error from its result.json (``read_status``)."""
    for run in plan.runs:
        run.status, run.error = read_status(Path(run.run_dir), run.config, run.fingerprint)
    return plan


def sweep_summary(runs: list[PlannedRun]) -> str:
    """`9 runs: 8 ok, 1 failed (R50-C4: FloatingPointError: ...)` (+ `, 1 missing (X101-C4)`),
    each error's first line cut to 90 characters."""
    ok = [r for r in runs if r.status == "ok"]
    failed = [r for r in runs if r.status == "failed"]
    missing = [r for r in runs if r.status == "missing"]

    def short(msg: str | None) -> str:
        first = (msg or "").strip().splitlines()[0] if (msg or "").strip() else "no error recorded"
        return first if len(first) <= 90 else first[:87] + "..."

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
                      summary=sweep_summary(plan.runs))


# ----------------------------------------------------------------------------- running
def run_multirun(overrides: list[str]) -> int:
    """Hydra multirun of the train app's task function in this process; 0, or 1 if Hydra failed.

    This is what `@hydra.main` does for `-m`, with the config folder given explicitly
    (``benchmark.sweeping.plan``'s docstring says why). In-process, the task function comes
    from an importable module, which the joblib and submitit launchers pickle.
    """
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    app = importlib.import_module(TRAIN_MODULE)
    task_function = getattr(app.main, "__wrapped__", app.main)  # the undecorated function
    version.setbase("1.3")
    register_launchers(CONF_DIR)
    GlobalHydra.instance().clear()
    try:
        hyd = Hydra.create_main_hydra2(task_name=CONFIG_NAME,
                                       config_search_path=create_config_search_path(str(CONF_DIR)))
        hyd.multirun(config_name=CONFIG_NAME, task_function=task_function, overrides=list(overrides))
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


def sweep(overrides: list[str]) -> tuple[int, SweepPlan]:
    """Plan, run, collect; (exit code, plan with statuses). Raises SweepError if unplannable,
    NotOwned if an output folder is not lungbench's, OutputBusy if the sweep is running already."""
    plan = plan_sweep(overrides)
    claim_outputs(plan)
    with output_lock(plan.sweep_dir, "SWEEP_DIR"):
        return _sweep_locked(plan)


def _sweep_locked(plan: SweepPlan) -> tuple[int, SweepPlan]:
    read_statuses(plan)
    write_sweep_file(plan, None)  # the plan is on disk before any run starts (reports read it)
    done = sum(r.status == "ok" for r in plan.runs)
    print(f"sweep: {len(plan.runs)} runs in {plan.sweep_dir}"
          + (f" ({done} already ok: skipped)" if done else ""), flush=True)
    try:
        rc = run_multirun(plan.overrides)
    except KeyboardInterrupt:  # a run re-raises Ctrl-C / SIGTERM after recording it: summarise, stop
        rc = 130
    read_statuses(plan)
    write_sweep_file(plan, rc)
    for r in plan.runs:
        if r.status != "ok":
            print(f"  {r.status.upper()}: {r.label}  {Path(r.run_dir) / RESULT_FILE}"
                  + (f"  {r.error.splitlines()[0]}" if r.error else ""))
    ok = bool(plan.runs) and all(r.status == "ok" for r in plan.runs)
    if rc and ok:  # every run says ok but Hydra failed after them (e.g. a launcher error)
        print(f"sweep: Hydra exited with {rc} although every run is ok")
    print(sweep_summary(plan.runs), flush=True)
    return (rc if rc == 130 else 0 if ok and not rc else 1), plan
