"""Where a converter error comes from decides how it is reported.

A bad option value or phantom parameter is a ConfigError, found before any work starts:
the CLI prints one ``error: config: ...`` line and exits 2. A ValueError raised inside the
conversion (a fault in lungbench or in a library) is not a bad option: it keeps its
traceback and never reads as a config error.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from converters import phantom
from converters.config import compose, load_config
from converters.convert import convert
from contracts.errors import ConfigError
from converters.errors import ConversionError

REPO = Path(__file__).resolve().parent.parent


def cli(cwd: Path, *overrides: str, patch: str = "") -> subprocess.CompletedProcess:
    """``python -m converters.convert <overrides>``, with ``patch`` (Python) run first."""
    code = ("import runpy\n" + patch
            + "runpy.run_module('converters.convert', run_name='__main__', alter_sys=True)\n")
    return subprocess.run([sys.executable, "-c", code, *overrides], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------- CLI
def test_value_error_inside_the_conversion_is_not_a_config_error(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    patch = ("import converters.layout as layout\n"
             "def broken(*a, **k):\n"
             "    raise ValueError('boom inside the conversion')\n"
             "layout.discover = broken\n")
    p = cli(tmp_path, "data=covid19_ct_seg", f"data.root={raw}", f"out={tmp_path / 'out'}",
            patch=patch)
    assert p.returncode not in (0, 2), p.stderr
    assert "error: config" not in p.stderr
    assert "Traceback" in p.stderr and "ValueError: boom inside the conversion" in p.stderr


@pytest.mark.parametrize("override, words", [
    ("slices.keep=some", "slices.keep must be all|lung|stride, not 'some'"),
    ("workers=abc", "workers must be a number, not 'abc'"),
    ("infection.connectivity=6", "infection.connectivity must be 4 or 8"),
    ("+data.generate.n_casez=2", "unknown phantom parameter(s): ['n_casez']"),
    ("data.generate.preset=huge", "unknown phantom preset 'huge'"),
])
def test_bad_option_is_a_short_config_error(tmp_path, override, words):
    p = cli(tmp_path, "data=phantom", f"out={tmp_path / 'data' / 'phantom'}", override)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: config: ") and p.stderr.count("\n") == 1, p.stderr
    assert words in p.stderr and "Traceback" not in p.stderr
    assert sorted(os.listdir(tmp_path)) == []  # nothing generated, nothing converted


# ----------------------------------------------------------------------------- Python API
def test_bad_option_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"png_compress_level must be 0\.\.9") as ei:
        convert(tmp_path / "raw", tmp_path / "out", {"png_compress_level": 12})
    assert isinstance(ei.value, ValueError)  # callers catching ValueError keep working
    with pytest.raises(ConfigError, match="window must be"):
        convert(tmp_path / "raw", tmp_path / "out", {"window": 5})
    assert sorted(os.listdir(tmp_path)) == []


def test_value_error_from_the_splits_is_not_a_conversion_error(tiny_raw, tmp_path, monkeypatch):
    import converters.convert

    def broken(*a, **k):
        raise ValueError("boom in the splits")

    monkeypatch.setattr(converters.convert, "build_splits", broken)
    with pytest.raises(ValueError, match="boom in the splits") as ei:
        convert(tiny_raw, tmp_path / "out", {"workers": 1})
    assert not isinstance(ei.value, (ConversionError, ConfigError))
    assert not (tmp_path / "out").exists()


def test_too_few_cases_left_for_the_folds_is_a_conversion_error(tmp_path):
    raw = phantom.generate(tmp_path / "raw", preset="tiny", n_cases=3)
    (raw / phantom.COMBINED_DIR / "phantom_000.nii.gz").unlink()
    cfg = {"workers": 1, "on_bad_case": "skip", "splits": {"patient_kfold": {"k": 3}}}
    with pytest.raises(ConversionError, match=r"splits\.patient_kfold\.k=3 exceeds .*\(2\)"):
        convert(raw, tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- composition
def test_load_config_is_the_composed_config():
    want = compose(["data=covid19_ct_seg", "slices.keep=all"])
    got = load_config({"data": {"name": "covid19_ct_seg"}, "slices": {"keep": "all"}})
    assert OmegaConf.to_container(got, resolve=True) == OmegaConf.to_container(want, resolve=True)
    assert load_config().data.name == "phantom"
    assert OmegaConf.to_container(load_config({"data": {"name": "mine"}}).data) == {"name": "mine"}
    with pytest.raises(Exception, match="windw"):
        load_config({"windw": [0, 1]})


def test_load_config_inside_a_hydra_app():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        assert load_config({"workers": 2}).workers == 2
        assert "backbone" in hydra_compose("train")  # the app's own Hydra is left as it was
