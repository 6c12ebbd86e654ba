"""The converter's configuration outside Hydra: conf/convert.yaml + conf/data/<name>.yaml.

The Hydra app composes the same files; the Python API uses ``load_config`` so both see
the same defaults and a misspelt key fails loudly (struct mode).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Keys that do not change the converted data (where it goes, how fast, where the raw
# folder is: sources are compared by content).
NON_SEMANTIC = ("out", "workers")


def load_config(cfg: Any = None) -> DictConfig:
    """Defaults from conf/, with ``cfg`` (dict or DictConfig, possibly partial) merged on top."""
    user = OmegaConf.create(cfg if cfg is not None else {})
    if "hydra" in user:
        user = OmegaConf.masked_copy(user, [k for k in user if k != "hydra"])
    base = OmegaConf.load(CONF_DIR / "convert.yaml")
    base.pop("defaults", None)
    base.pop("hydra", None)
    data_name = OmegaConf.select(user, "data.name", default=None) or "phantom"
    data_file = CONF_DIR / "data" / f"{data_name}.yaml"
    base.data = OmegaConf.load(data_file) if data_file.exists() else OmegaConf.create({"name": data_name})
    OmegaConf.set_struct(base, True)  # a misspelt key raises
    OmegaConf.set_struct(base.data, False)  # a data config may carry fields of its own
    merged = OmegaConf.merge(base, user)
    OmegaConf.set_struct(merged, False)
    return merged


def semantic(cfg: DictConfig) -> dict:
    """The resolved config minus keys that do not change the output."""
    d = OmegaConf.to_container(cfg, resolve=True)
    for k in NON_SEMANTIC:
        d.pop(k, None)
    data = dict(d.get("data") or {})
    data.pop("root", None)
    d["data"] = data
    return d


def config_hash(cfg: DictConfig, converter_version: int) -> str:
    blob = json.dumps({"v": converter_version, "cfg": semantic(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
