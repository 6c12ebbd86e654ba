"""Hydra entry point of one run: ``python -m benchmark.train backbone=r50_fpn solver=smoke
dataset_dir=<converted> hydra.run.dir=<run dir>`` -> ``<run dir>/result.json``.

The work is ``benchmark.run.run``; this only hands it Hydra's config and output folder.
A single run exits with run()'s status; under ``-m`` (multirun) a failed run returns its
status instead of raising, so every job records its own result and the sweep goes on.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> int:
    from benchmark.run import run

    hc = HydraConfig.get()
    status = run(cfg, hc.runtime.output_dir)
    if status and hc.mode != RunMode.MULTIRUN:
        sys.exit(status)
    return status


if __name__ == "__main__":
    main()
