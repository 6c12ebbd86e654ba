"""Report speed: build the whole report (CSV, Markdown, PNG plots, overlays, HTML) for a
synthetic sweep of 100 runs (nine backbones cycled over folds, one backbone failing, every
ok run with a detectron2-like metrics.json and COCO predictions on a shared test set).

Figures: ``report_100_runs_s`` = wall time of ``python -m reports.build <sweep>`` in a fresh
interpreter (what a user waits for, imports included; target under 10 s);
``report_100_runs_cpu_s`` = that process's CPU time (the build is single-threaded, so this is
its wall time on an idle core, and it stays steady on a shared machine); and
``report_100_runs_build_s`` = the same build in this process with imports already done.
Usage::

    python -m perf.bench_report          # prints the figures as JSON
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reports.build import build_report
from tests.synthetic import write_sweep

N_RUNS = 100
REPO = Path(__file__).resolve().parents[1]


def run(tmpdir: Path) -> dict:
    tmpdir = Path(tmpdir)
    sweep = tmpdir / "sweep"
    t0 = time.perf_counter()
    write_sweep(sweep, tmpdir / "data", n_runs=N_RUNS, failed=["R101-C4"])
    gen_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-m", "reports.build", str(sweep)], cwd=REPO,
                         capture_output=True, text=True)
    cli_s = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the build process: what wall time would be on an idle core (the build
    # is single-threaded), and steady when other jobs share the machine.
    cli_cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if out.returncode != 0:
        raise RuntimeError(f"python -m reports.build failed ({out.returncode}): {out.stderr[-2000:]}")

    t0 = time.perf_counter()
    html = build_report(sweep, progress=False)
    build_s = time.perf_counter() - t0
    n_png = len(list(html.parent.glob("*.png")))
    detail = (f"{N_RUNS} synthetic runs, {n_png} PNGs, report.html {html.stat().st_size / 1e6:.1f} MB; "
              f"generating the sweep took {gen_s:.1f} s (not counted)")
    return {
        "report_100_runs_s": {"value": round(cli_s, 2), "unit": "s", "target": "< 10",
                              "detail": "python -m reports.build in a fresh interpreter; " + detail},
        "report_100_runs_cpu_s": {"value": round(cli_cpu_s, 2), "unit": "CPU s", "target": "< 10",
                                  "detail": "user+sys CPU time of that process (robust to other load)"},
        "report_100_runs_build_s": {"value": round(build_s, 2), "unit": "s",
                                    "detail": "reports.build.build_report() in-process, imports done"},
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="perf-report-") as tmp:
        print(json.dumps(run(Path(tmp)), indent=1))
