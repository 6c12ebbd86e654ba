"""Hydra entry point of one run: ``python -m benchmark.train backbone=r50_fpn solver=smoke
dataset_dir=<converted> hydra.run.dir=<run dir>`` -> ``<run dir>/result.json``.

The work is ``benchmark.training.run.run``; this only hands it Hydra's config and output folder.
A single run exits with run()'s status (0 ok or skipped, 1 failed, 2 run dir holds another
finished run). Under ``-m`` (multirun) a failed run returns its status instead of raising,
so every job records its own result and the sweep goes on. Ctrl-C (130) and SIGTERM (143)
stop everything, after the run has recorded them.
"""

import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from benchmark.sweeping.hydra_callbacks import register_launchers

# `-m hydra/launcher=joblib|submitit_*` gets lungbench's launcher settings (conf/hydra/launcher)
register_launchers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> int:
    # detectron2 v0.6 scripts a few helpers at import: noise on current torch
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    from benchmark.training.run import run
    from benchmark.training.signals import Terminated

    hc = HydraConfig.get()
    try:
        status = run(cfg, hc.runtime.output_dir)
    except KeyboardInterrupt:
        sys.exit(130)
    except Terminated:
        sys.exit(143)
    if status and hc.mode != RunMode.MULTIRUN:
        sys.exit(status)
    return status


if __name__ == "__main__":
    main()
