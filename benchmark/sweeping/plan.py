"""Planning a sweep: the runs Hydra's basic sweeper will launch, each with its folder, the config
it will record and its identity, computed before any run starts.

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

from dataclasses import dataclass, field
from pathlib import Path

import benchmark.training.config
from benchmark.sweeping.hydra_callbacks import register_launchers
from benchmark.training.config import CONF_DIR
from contracts.dataset import fingerprint as dataset_fingerprint
from contracts.identity import identity

CONFIG_NAME = "train"
TRAIN_MODULE = "benchmark.train"


class SweepError(RuntimeError):
    """The sweep cannot be planned (bad override, unknown experiment, unsupported sweeper)."""


@dataclass
class PlannedRun:
    label: str                 # the run's folder name below the sweep dir, e.g. "R50-FPN_fold=1"
    run_dir: str               # absolute
    overrides: list[str]       # the job's overrides, as Hydra passes them to the run
    status: str = "planned"    # after read_statuses(): ok | failed | missing
    error: str | None = None   # "Type: message" of a failed run, or why result.json is unreadable
    # the resolved config the run records (benchmark.training.config.run_config; None if it
    # cannot be computed here); an "ok" result.json with a different config is not this run's result
    config: dict | None = field(default=None, repr=False)
    # the dataset's fingerprint for this run's split (contracts.dataset; None if unreadable)
    fingerprint: dict | None = field(default=None, repr=False)
    # contracts.identity.identity(config, fingerprint): what the report matches on
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


def plan_sweep(overrides: list[str]) -> SweepPlan:
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
    register_launchers(CONF_DIR)  # hydra/launcher=joblib etc.: lungbench's settings
    GlobalHydra.instance().clear()
    hyd = Hydra.create_main_hydra2(task_name=CONFIG_NAME,
                                   config_search_path=create_config_search_path(str(CONF_DIR)))
    try:
        cfg = hyd.compose_config(CONFIG_NAME, list(overrides), run_mode=RunMode.MULTIRUN,
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
        cfg = hyd.compose_config(CONFIG_NAME, extra, run_mode=RunMode.MULTIRUN, with_log_configuration=False)

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
            config = planned_config(job_cfg, label)
            fingerprint = planned_fingerprint(config)
            plan.runs.append(PlannedRun(label=label, run_dir=str(sweep_dir / label), overrides=list(job),
                                        config=config, fingerprint=fingerprint,
                                        identity=None if config is None else identity(config, fingerprint)))
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


def planned_fingerprint(config: dict | None) -> dict | None:
    """The fingerprint of the planned run's dataset split, as the run will compute it."""
    if config is None:
        return None
    split = config.get("split") or {}
    return dataset_fingerprint(config.get("dataset_dir") or "", split.get("scheme"), split.get("fold", 0))


def planned_config(job_cfg, label: str) -> dict:
    """The config the run will record in result.json (benchmark.training.config.run_config).

    Called with HydraConfig set to the job's config, as inside the run. A config that cannot
    be resolved here cannot be resolved by the run either: the run computes it before anything
    else, outside the part that records a failure, so it would stop the whole multirun. Such a
    config is the user's to fix: SweepError (exit 2) names the run before any run starts.
    Anything else is a bug; it propagates, with a note naming the run.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.masked_copy(job_cfg, [k for k in job_cfg if k != "hydra"])
    try:
        return benchmark.training.config.run_config(cfg)
    # OmegaConf's errors, all of them the config's: a missing mandatory value (dataset_dir=???),
    # an interpolation to a missing key, a resolver that fails (${lungbench_jobs:...}), a value
    # of the wrong type
    except OmegaConfBaseException as e:
        raise SweepError(f"run {label}: its config cannot be resolved: {type(e).__name__}: "
                         f"{str(e).strip()}") from e
    except Exception as e:
        e.add_note(f"benchmark.sweeping.plan: while computing the config of the planned run {label}")
        raise
