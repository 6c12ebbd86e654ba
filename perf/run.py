"""`make perf`: run every harness benchmark and write perf/results.json + perf/RESULTS.md.

Each ``perf/bench_*.py`` module exposes ``run(tmpdir: Path) -> dict``: figure name ->
either a number or a dict with at least ``value`` (and optionally ``unit``, ``target``,
``detail``). Figures are ratios or times measured side by side in the same run, because
these machines are noisy. Usage::

    python -m perf.run [--only converter,eval] [--out perf]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from contracts.fsutil import write_text

BENCHES = ["converter", "train", "eval", "volume3d", "report"]


def _normalise(figures: dict) -> dict:
    out = {}
    for name, fig in figures.items():
        out[name] = dict(fig) if isinstance(fig, dict) else {"value": fig}
    return out


def run_benches(names: list[str]) -> dict:
    """Run each named bench in its own temp dir; a failing bench is recorded, not fatal."""
    results: dict = {}
    for name in names:
        mod = f"perf.bench_{name}"
        t0 = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix=f"perf-{name}-") as tmp:
                figures = importlib.import_module(mod).run(Path(tmp))
            results[name] = {"status": "ok", "figures": _normalise(figures)}
        except Exception as exc:  # a broken bench must not hide the others
            results[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc(), "figures": {}}
        results[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        results[name]["command"] = f"python -m perf.run --only {name}"
        print(f"[perf] {name}: {results[name]['status']} in {results[name]['wall_s']} s", flush=True)
    return results


def render_markdown(doc: dict) -> str:
    lines = [
        "# lungbench performance",
        "",
        f"Measured {doc['measured_at']} on {doc['machine']} (`make perf`). Every figure is measured",
        "side by side in one run; ratios are what to compare across machines.",
        "",
        "| bench | figure | value | unit | target | detail |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for bench, res in doc["benches"].items():
        if res["status"] != "ok":
            lines.append(f"| {bench} | FAILED | - | - | - | {res['error']} |")
            continue
        for name, fig in res["figures"].items():
            val = fig.get("value")
            val = f"{val:.4g}" if isinstance(val, (int, float)) else str(val)
            lines.append(
                f"| {bench} | `{name}` | {val} | {fig.get('unit', '')} | {fig.get('target', '') or ''} "
                f"| {str(fig.get('detail', '')).replace('|', '/')} |"
            )
    lines += ["", "Reproduce one bench: `.venv/bin/python -m perf.run --only <bench>` "
              f"(benches: {', '.join(doc['benches'])}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="lungbench speed benchmarks")
    ap.add_argument("--only", default=",".join(BENCHES), help="comma list of " + ",".join(BENCHES))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(BENCHES)
    if unknown:
        ap.error(f"unknown bench(es) {sorted(unknown)}; choose from {BENCHES}")
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "benches": run_benches(names),
    }
    # Keep figures of benches not run this time, so `--only` refines instead of erasing.
    old = args.out / "results.json"
    if old.exists() and set(names) != set(BENCHES):
        prev = json.loads(old.read_text()).get("benches", {})
        doc["benches"] = {**prev, **doc["benches"]}
    # Every figure by its stable name, flat, for tools and for comparing machines.
    doc["figures"] = {name: fig.get("value") for res in doc["benches"].values()
                      for name, fig in res["figures"].items()}
    write_text(args.out / "results.json", json.dumps(doc, indent=1))
    write_text(args.out / "RESULTS.md", render_markdown(doc))
    print(f"[perf] wrote {args.out / 'RESULTS.md'}")
    return 0 if all(r["status"] == "ok" for r in doc["benches"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
