"""Hydra callbacks of the train app (conf/train.yaml ``hydra.callbacks``).

``OwnedOutputs`` checks the output folder before Hydra writes anything into it (its
``.hydra/`` and log file come before the task function runs): a run folder or sweep folder
must be new, empty, or one lungbench made (fsutil's owner marker); it is then marked. A
folder of the user's is refused with exit 2 and left as it was.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from converters.fsutil import NotOwned, claim


def _claim_or_exit(folder: str, kind: str, what: str) -> None:
    try:
        claim(folder, kind, what)
    except NotOwned as e:
        print(f"{e}; nothing done.", file=sys.stderr)
        sys.exit(2)


class OwnedOutputs(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # hydra.run.dir may use ${hydra:...}
        _claim_or_exit(str(config.hydra.run.dir), "run", "RUN_DIR (hydra.run.dir)")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)
        _claim_or_exit(str(config.hydra.sweep.dir), "sweep", "SWEEP_DIR (hydra.sweep.dir)")
