"""The converter's configuration outside the Hydra app: conf/convert.yaml composed by Hydra.

The CLI (``@hydra.main`` in converters/convert.py) and the Python API compose the same
files with the same machinery, so both see the same defaults, defaults list and data
config; ``load_config`` then merges a (partial) dict on top in struct mode, so a misspelt
key fails loudly.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from contracts.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Keys that do not change the converted data (where it goes, how fast, where the raw
# folder is: sources are compared by content).
NON_SEMANTIC = ("out", "workers")


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The converter config from conf/convert.yaml + Hydra overrides (``data=covid19_ct_seg``,
    ``slices.keep=all``...), as ``python -m converters.convert`` would compose it.

    Works inside a running Hydra app too: its global state is set aside while composing
    and put back afterwards.
    """
    from hydra import compose as _compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    gh = GlobalHydra.instance()
    active = gh.hydra if gh.is_initialized() else None
    if active is not None:
        gh.clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return _compose("convert", overrides=list(overrides))
    finally:
        if active is not None:
            GlobalHydra.instance().initialize(active)


def load_config(cfg: Any = None) -> DictConfig:
    """The composed defaults (``data=<cfg.data.name>``, phantom when unset) with ``cfg``
    (dict or DictConfig, possibly partial) merged on top; unknown top-level keys raise.

    A ``data.name`` without a conf/data/<name>.yaml gets a data config of that name only.
    """
    user = OmegaConf.create(cfg if cfg is not None else {})
    if "hydra" in user:
        user = OmegaConf.masked_copy(user, [k for k in user if k != "hydra"])
    data_name = OmegaConf.select(user, "data.name", default=None) or "phantom"
    if (CONF_DIR / "data" / f"{data_name}.yaml").is_file():
        base = compose([f"data={data_name}"])
    else:
        base = compose(["~data"])
        with open_dict(base):
            base.data = {"name": data_name}
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
    """Reject bad option values up front, naming the key (ConfigError).

    A value of the wrong type (``workers=abc``, ``window=5``) is a ConfigError too.
    """
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    def num(kind: type, value: Any, key: str) -> Any:
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, not {value!r}") from None

    need(c["layout"] in ("auto", "zenodo", "kaggle"),
         f"layout must be auto|zenodo|kaggle, not {c['layout']!r}")
    need(c["on_bad_case"] in ("fail", "skip"), f"on_bad_case must be fail|skip, not {c['on_bad_case']!r}")
    need(c["workers"] is None or num(int, c["workers"], "workers") >= 1,
         f"workers must be >= 1 or null, not {c['workers']}")
    need(isinstance(c["windows"], dict), f"windows must be a mapping name: [low HU, high HU], "
         f"not {c['windows']!r}")
    wins = {"window": c["window"], **{f"windows.{k}": v for k, v in c["windows"].items()}}
    for key, w in wins.items():
        bad = f"{key} must be [low HU, high HU] with low < high, not {w}"
        need(isinstance(w, (list, tuple)) and len(w) == 2, bad)
        need(num(float, w[0], key) < num(float, w[1], key), bad)
    need(len(c["windows"]) in (1, 3) or not c["multiwindow"],
         "multiwindow needs 3 windows (R, G, B) or 1 under `windows`")
    need(c["slices"]["keep"] in ("all", "lung", "stride"),
         f"slices.keep must be all|lung|stride, not {c['slices']['keep']!r}")
    need(num(int, c["slices"]["stride"], "slices.stride") >= 1,
         f"slices.stride must be >= 1, not {c['slices']['stride']}")
    need(num(int, c["infection"]["connectivity"], "infection.connectivity") in (4, 8),
         f"infection.connectivity must be 4 or 8, not {c['infection']['connectivity']}")
    need(num(int, c["infection"]["min_area"], "infection.min_area") >= 1,
         f"infection.min_area must be >= 1, not {c['infection']['min_area']}")
    need(0 <= num(int, c["png_compress_level"], "png_compress_level") <= 9,
         f"png_compress_level must be 0..9, not {c['png_compress_level']}")
    need(num(float, c["verify"]["affine_atol"], "verify.affine_atol") >= 0,
         "verify.affine_atol must be >= 0")
    need(num(int, c["verify"]["max_voxels"], "verify.max_voxels") >= 1,
         "verify.max_voxels must be >= 1")
    for scheme in ("patient_kfold", "slice_random"):
        key = f"splits.{scheme}.k"
        need(num(int, c["splits"][scheme]["k"], key) >= 2, f"{key} must be >= 2")
