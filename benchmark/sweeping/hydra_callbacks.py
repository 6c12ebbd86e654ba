"""Hydra glue of the train app: its callbacks (conf/train.yaml ``hydra.callbacks``) and the
launcher configs behind ``hydra/launcher=joblib|submitit_local|submitit_slurm``.

``OwnedOutputs`` checks the output folder before Hydra writes anything into it (its log file
comes before the task function runs): a run folder or sweep folder must be new, empty, or one
lungbench made (fsutil's owner marker); it is then marked. A folder of the user's is refused
with exit 2 and left as it was, and so is any Hydra setting that would write elsewhere
(``hydra.output_subdir``, a log file outside the run folder).

``register_launchers`` makes the launcher plugins' own names carry lungbench's settings
(``conf/hydra/launcher/lungbench_<name>.yaml``). Those files cannot have the plugins' names:
Hydra checks a config file against the ConfigStore entry of the same name (the plugin's
schema) by "automatic schema matching", deprecated since Hydra 1.1 and announced for removal.
Nor can a defaults list pick them by the launcher choice: the primary config's defaults list
is expanded before Hydra's own, so ``${hydra/launcher}`` is unknown there. So the plugin's
ConfigStore entry is replaced by itself merged with lungbench's settings: a structured config,
which Hydra loads without any schema matching.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from benchmark.training.config import CONF_DIR
from contracts.fsutil import NotOwned, claim

LAUNCHER_PREFIX = "lungbench_"
OUTPUT_DIR = "${hydra.runtime.output_dir}/"


def hydra_output_problems(config: DictConfig) -> list[str]:
    """Hydra settings that would make Hydra write outside the claimed run folder: its
    ``.hydra/`` (lungbench writes that itself, inside the run folder, once it is claimed) and
    any log file not named inside ``${hydra.runtime.output_dir}``."""
    hydra = config.hydra
    problems = []
    if hydra.get("output_subdir") is not None:
        problems.append(f"hydra.output_subdir={hydra.output_subdir}: lungbench writes .hydra/ itself, "
                        "inside the run folder; leave hydra.output_subdir out")
    for group in ("job_logging", "hydra_logging"):
        handlers = OmegaConf.to_container(hydra.get(group) or {}, resolve=False).get("handlers") or {}
        for name, handler in handlers.items():
            filename = (handler or {}).get("filename") if isinstance(handler, dict) else None
            if filename is None:
                continue
            # what may follow the run folder: a plain name, or Hydra's own ${hydra.job.name}
            rest = str(filename).removeprefix(OUTPUT_DIR).replace("${hydra.job.name}", "job")
            if (group == "hydra_logging" or not str(filename).startswith(OUTPUT_DIR)
                    or "${" in rest or ".." in Path(rest).parts or rest.startswith("/")):
                problems.append(f"hydra.{group}.handlers.{name}.filename={filename}: a log file goes "
                                f"inside the run folder ({OUTPUT_DIR}<name>.log) or nowhere")
    return problems


def _claim_or_exit(config: DictConfig, folder: str, kind: str, what: str) -> None:
    problems = hydra_output_problems(config)
    if problems:
        print("refused, nothing done: " + "; ".join(problems), file=sys.stderr)
        sys.exit(2)
    try:
        claim(folder, kind, what)
    except NotOwned as e:
        print(f"{e}; nothing done.", file=sys.stderr)
        sys.exit(2)


class OwnedOutputs(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # hydra.run.dir may use ${hydra:...}
        _claim_or_exit(config, str(config.hydra.run.dir), "run", "RUN_DIR (hydra.run.dir)")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)
        _claim_or_exit(config, str(config.hydra.sweep.dir), "sweep", "SWEEP_DIR (hydra.sweep.dir)")


def register_launchers(conf_dir: str | Path = CONF_DIR) -> list[str]:
    """Store ``hydra/launcher/<name>`` in Hydra's ConfigStore as the plugin's own config merged
    with ``<conf_dir>/hydra/launcher/lungbench_<name>.yaml`` (for every such file whose plugin
    is installed); returns the names. Idempotent. Call it before Hydra composes a config:
    benchmark.sweeping does; joblib and submitit workers receive the ConfigStore from the sweep.

    Each file's defaults list must be ``[<name>, _self_]``: the same file then also works as
    ``hydra/launcher=lungbench_<name>`` through Hydra alone."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    from omegaconf import OmegaConf

    # A plugin stores its config when Hydra first scans the plugins; scanning now means that
    # store comes before ours (a later scan in this process does not happen).
    Plugins.instance()
    store = ConfigStore.instance()
    installed = set(store.list("hydra/launcher"))
    done = []
    for path in sorted(Path(conf_dir, "hydra", "launcher").glob(f"{LAUNCHER_PREFIX}*.yaml")):
        name = path.stem.removeprefix(LAUNCHER_PREFIX)
        if f"{name}.yaml" not in installed:  # that launcher plugin is not installed
            continue
        settings = OmegaConf.load(path)
        defaults = OmegaConf.to_container(settings.pop("defaults", None) or [])
        if defaults != [name, "_self_"]:
            raise ValueError(f"{path}: its defaults list must be [{name}, _self_], not {defaults}")
        plugin = store.load(f"hydra/launcher/{name}.yaml")
        store.store(name=name, group="hydra/launcher", package=plugin.package, provider="lungbench",
                    node=OmegaConf.merge(plugin.node, settings))
        done.append(name)
    return done
