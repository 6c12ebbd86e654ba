"""One packed run of the GPU check: a separate process that trains one backbone for a
common time window next to k-1 others on the same GPU.

    python -m perf.gpu_worker --spec SPEC.json

SPEC.json (written by perf/gpu_check.py): dataset, backbone, solver, amp, device, index,
sync_dir, out_json, warmup, window_s, ready_timeout_s, threads, num_workers, cudnn_benchmark,
spawned_at.
Protocol, through files in ``sync_dir``: after its warm-up the process writes
``ready_<index>`` and waits for ``go`` (JSON {"deadline": epoch seconds}), then trains until
that deadline; it writes its figures (perf.gpu_bench.train_slice's dict + import_s, or an
error) to ``out_json`` atomically and exits 0, or 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from reports.atomic import write_text

POLL_S = 0.05


def wait_for_go(sync_dir: Path, index: int, timeout_s: float, window_s: float) -> float:
    """Say ready, wait for the common start; returns the deadline (epoch seconds). If no
    ``go`` comes within ``timeout_s`` (the parent died or gave up), time alone."""
    (sync_dir / f"ready_{index}").write_text(str(time.time()))
    go = sync_dir / "go"
    end = time.time() + timeout_s
    while time.time() < end:
        if go.is_file():
            try:
                return float(json.loads(go.read_text())["deadline"])
            except (ValueError, KeyError):
                pass  # being written (it is renamed into place, but be safe)
        time.sleep(POLL_S)
    return time.time() + window_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, required=True)
    spec = json.loads(ap.parse_args(argv).spec.read_text())
    out_json = Path(spec["out_json"])
    res = {"name": spec["name"], "backbone": spec["backbone"], "index": spec["index"],
           "error": None}
    try:
        import torch

        torch.set_num_threads(int(spec["threads"]))
        torch.backends.cudnn.benchmark = bool(spec.get("cudnn_benchmark", False))
        from perf import gpu_bench as G

        G.quiet_detectron2()
        d2, _, _, _ = G.build_cfg(Path(spec["dataset"]), spec["backbone"], spec["solver"],
                                  amp=spec["amp"], device=spec["device"],
                                  out_dir=out_json.parent / f"d2_{spec['index']}",
                                  max_iter=100_000, num_workers=spec["num_workers"])
        res["import_s"] = time.time() - float(spec["spawned_at"])
        sync = Path(spec["sync_dir"])
        res.update(G.train_slice(
            d2, warmup=int(spec["warmup"]), iters=100_000, window_s=float(spec["window_s"]),
            on_warm=lambda: wait_for_go(sync, int(spec["index"]), float(spec["ready_timeout_s"]),
                                        float(spec["window_s"]))))
    except BaseException as e:  # noqa: BLE001 - every failure (OOM included) is a result
        res["error"] = f"{type(e).__name__}: {e}"[:500]
        res["traceback"] = traceback.format_exc()[-3000:]
        (Path(spec["sync_dir"]) / f"ready_{spec['index']}").write_text("failed")
    write_text(out_json, json.dumps(res, indent=1))
    return 1 if res["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
