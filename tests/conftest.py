"""Shared fixtures: the tiny phantom, raw and converted (session-scoped, ~1 s)."""
from __future__ import annotations

from pathlib import Path

import pytest

from converters import phantom
from converters.convert import convert


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """Zenodo-layout raw folder of the ``tiny`` phantom (5 cases, 64x64x14, seed 0)."""
    return phantom.generate(tmp_path_factory.mktemp("raw") / "phantom", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_raw, tmp_path_factory) -> Path:
    """Converted dataset dir of the tiny phantom (default convert config, one process).

    5 cases ``phantom_000..004``, 64x64 grey PNGs, lung slices only (~11 per case);
    ``annotations/patient_kfold_f{0..4}_{train,test}.json`` (one test case per fold),
    ``slice_random_f{0..4}_*``; no ``ma2021_5fold`` (not the official ids).
    Treat it as read-only: it is shared by every test of the session.
    """
    return convert(tiny_raw, tmp_path_factory.mktemp("data") / "phantom", {"workers": 1})
