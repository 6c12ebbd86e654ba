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


def validate(c: dict) -> None:
    """Reject bad option values up front, naming the key (ValueError)."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(msg)

    need(c["layout"] in ("auto", "zenodo", "kaggle"),
         f"layout must be auto|zenodo|kaggle, not {c['layout']!r}")
    need(c["on_bad_case"] in ("fail", "skip"), f"on_bad_case must be fail|skip, not {c['on_bad_case']!r}")
    need(c["workers"] is None or int(c["workers"]) >= 1, f"workers must be >= 1 or null, not {c['workers']}")
    wins = {"window": c["window"], **{f"windows.{k}": v for k, v in c["windows"].items()}}
    for key, w in wins.items():
        need(len(w) == 2 and float(w[0]) < float(w[1]),
             f"{key} must be [low HU, high HU] with low < high, not {w}")
    need(len(c["windows"]) in (1, 3) or not c["multiwindow"],
         "multiwindow needs 3 windows (R, G, B) or 1 under `windows`")
    need(c["slices"]["keep"] in ("all", "lung", "stride"),
         f"slices.keep must be all|lung|stride, not {c['slices']['keep']!r}")
    need(int(c["slices"]["stride"]) >= 1, f"slices.stride must be >= 1, not {c['slices']['stride']}")
    need(int(c["infection"]["connectivity"]) in (4, 8),
         f"infection.connectivity must be 4 or 8, not {c['infection']['connectivity']}")
    need(int(c["infection"]["min_area"]) >= 1,
         f"infection.min_area must be >= 1, not {c['infection']['min_area']}")
    need(0 <= int(c["png_compress_level"]) <= 9,
         f"png_compress_level must be 0..9, not {c['png_compress_level']}")
    need(float(c["verify"]["affine_atol"]) >= 0, "verify.affine_atol must be >= 0")
    for scheme in ("patient_kfold", "slice_random"):
        need(int(c["splits"][scheme]["k"]) >= 2, f"splits.{scheme}.k must be >= 2")
