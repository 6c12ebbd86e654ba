"""GPU slots of a joblib sweep: at most jobs_per_gpu runs per GPU, spread over the GPUs, and a
slot comes free when its holder's process ends."""

from __future__ import annotations

import subprocess
import sys
import time

from benchmark.training.gpus import hold_slot


def test_slots_spread_over_gpus_and_fill_up(tmp_path):
    with hold_slot(2, 2, tmp_path) as a, hold_slot(2, 2, tmp_path) as b, \
            hold_slot(2, 2, tmp_path) as c, hold_slot(2, 2, tmp_path) as d:
        assert [a, b, c, d] == [0, 1, 0, 1]
    with hold_slot(2, 2, tmp_path) as again:  # all released
        assert again == 0


def test_a_dead_holder_frees_its_slot(tmp_path):
    code = (f"import time; from pathlib import Path; from benchmark.training.gpus import hold_slot\n"
            f"with hold_slot(1, 1, Path({str(tmp_path)!r})):\n    print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    p.kill()
    p.wait()
    t0 = time.perf_counter()
    with hold_slot(1, 1, tmp_path) as gpu:
        assert gpu == 0
    assert time.perf_counter() - t0 < 5
