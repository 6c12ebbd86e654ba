"""solver=paper is the paper's protocol by default: fp32 (AMP only when asked for)."""

from __future__ import annotations

import pytest

from benchmark.training.config import amp_choice, compose, resolve_switch
from contracts.errors import ConfigError


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_paper_solver_trains_in_fp32_unless_amp_is_asked_for(device):
    paper = compose(["solver=paper", "dataset_dir=/x"])
    assert amp_choice(paper) is False
    assert resolve_switch("amp", amp_choice(paper), device) is False
    smoke = compose(["solver=smoke", "dataset_dir=/x"])
    assert amp_choice(smoke) == "auto"
    assert resolve_switch("amp", amp_choice(smoke), device) is (device == "cuda")
    asked = compose(["solver=paper", "amp=true", "dataset_dir=/x"])
    if device == "cuda":
        assert resolve_switch("amp", amp_choice(asked), device) is True
    else:
        with pytest.raises(ConfigError, match="needs CUDA"):
            resolve_switch("amp", amp_choice(asked), device)
