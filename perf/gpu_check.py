"""The GPU check: per-backbone speed and memory next to detectron2's zoo, and how many runs one
GPU should hold at once, measured with the harness's own sweeps. Run it through
``perf/gpu_check.sh`` (perf/GPU.md), or directly::

    python -m perf.gpu_check [--dry-run] [--out DIR] [--levels 1,2,4,8] [hydra overrides ...]

It generates the phantom, then runs one short sweep per level: k = 1, ``python -m
benchmark.sweep +experiment=grid9 hydra/launcher=joblib jobs_per_gpu=1 solver.max_iter=N ...``
(once per precision), then per packing level k, GPUs x k runs of one backbone at once (seeds
0..k-1: equal runs, so they train at the same time), with iterations enough for the runs to
overlap. Its table comes from the result.json every run writes: ``timing.train_s_per_iter``,
``infer_s_per_image``, ``train_started_at``/``_finished_at``, ``memory.train_*``/``infer_*``,
``env.gpu_slot``. Nothing here trains a model itself.

After every level it writes ``gpu_check.md`` + ``gpu_check.json`` into ``--out`` (temp file,
then rename) and copies the level's result.json files under ``--out``/runs/, so a check cut
short leaves every level it finished. It stops inside ``--budget-s`` (counted from its start):
a sweep still running then is stopped (SIGTERM to its process group, SIGKILL after GRACE_S),
and so is one running when the check itself gets SIGTERM or SIGINT (then exit 143).
Exit status: 0; 1 if a run failed or a level was cut short or skipped; 2 without CUDA (unless
--dry-run) or with a GPU that torch cannot use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from contracts.catalog import BACKBONES, conf_name

REPO = Path(__file__).resolve().parent.parent
ZOO_JSON = Path(__file__).with_name("zoo.json")
TARGET_MIN = 45.0  # the goal: grid9 on one large GPU in under 45 minutes
GRID9 = [conf_name(b) for b in BACKBONES]  # the nine conf/backbone options
TEST_IMAGES = 704  # ~ one fifth of the real dataset's 3520 slices: one patient fold's test part
# sizes: phantom (pixels, cases, slices: the test case's ~40 slices are inference's sample),
# solver, iterations of a k = 1 run, packing (backbone, seconds of training each packed run is
# given alone: iterations = that / its s/iter at k = 1), levels, time budget (s, all in)
GPU_PLAN = dict(size=512, cases=3, slices=48, solver="paper", backbones=GRID9, iters=30,
                pack_backbone="r50_fpn", pack_train_s=15.0, levels=[1, 2, 4, 8], budget_s=420.0)
DRY_PLAN = dict(size=64, cases=2, slices=5, solver="smoke", backbones=["r50_fpn", "r50_c4"],
                iters=6, pack_backbone="r50_fpn", pack_train_s=4.0, levels=[1, 2], budget_s=900.0)
GRACE_S = 20.0  # a sweep stopped at the budget has this long to record its runs, then SIGKILL
PACK_ITERS_MAX = 2000
MIN_OVERLAP = 0.8  # below: the packed runs did not train together long enough to trust


# --------------------------------------------------------------------------- pure: figures


def display_name(key: str) -> str:
    """conf/backbone option -> the backbone's name: r50_c4 -> R50-C4."""
    return {conf_name(b): b for b in BACKBONES}.get(key, key.upper().replace("_", "-"))


def load_zoo(path: str | Path = ZOO_JSON) -> dict:
    """perf/zoo.json (the speed columns of detectron2's published model-zoo table)."""
    return json.loads(Path(path).read_text())


def zoo_figures(zoo: dict, backbone: str, ims_per_batch: int) -> dict | None:
    """The zoo's row for ``backbone`` ("R50-FPN"; its 3x row where there is one), its s/iter
    scaled from the zoo's images per GPU (16 on 8 GPUs = 2) to ``ims_per_batch``. None for
    cells not in the zoo (X101-C4, X101-DC5)."""
    rows = [c for c in zoo["configs"] if c["backbone"] == backbone]
    if not rows:
        return None
    row = next((c for c in rows if c["schedule"] == "3x"), rows[0])
    scale = ims_per_batch / (zoo["images_per_iter"] / zoo["gpus"])
    return {"schedule": row["schedule"], "scale": scale,
            "train_s_per_iter": row["train_s_per_iter"] * scale,
            "infer_s_per_image": row["inference_s_per_image"],
            "train_mem_mb": row["train_mem_gb"] * 1024.0}


def median(xs: Iterable[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def makespan(durations: Sequence[float], slots: int) -> float:
    """Wall time of jobs started in the given order on ``slots`` parallel slots, each job
    going to the first slot that frees (list scheduling, what joblib's pool does)."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    free = [0.0] * slots
    for d in durations:
        i = min(range(slots), key=free.__getitem__)
        free[i] += d
    return max(free) if durations else 0.0


def _max(*xs: float | None) -> float | None:
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


def run_facts(res: dict) -> dict:
    """What the check reads from one run's result.json (seconds, MiB; None where missing).
    Memory: training's and inference's GPU peaks apart, allocated (what the zoo reports) and
    reserved (what the GPU must have free); ``peak_mb``, what one run holds at most: the larger
    reserved peak, else ``memory.peak_gpu_mb``, else (no CUDA) the process's peak RSS.
    ``once_s``: what the run paid besides its iterations and inference (imports, model, data
    loader, metrics): its wall time (started_at..finished_at) - max_iter x s/iter - eval_wall_s.
    ``infer_timed``: test images in the inference median, all but the first (warm-up) batch;
    ``infer_warm``: whether there was a batch after it (else the median is of every batch, the
    warm-up one included: what ``benchmark.training.engine.median_after`` falls back to)."""
    t, mem, solver = res.get("timing") or {}, res.get("memory") or {}, res.get("solver") or {}
    err = res.get("error") or {}
    ok = res.get("status") == "ok"
    wall = None
    if res.get("started_at") and res.get("finished_at"):
        wall = (datetime.fromisoformat(res["finished_at"])
                - datetime.fromisoformat(res["started_at"])).total_seconds()
    s, n = t.get("train_s_per_iter"), solver.get("max_iter")
    once = max(0.0, wall - n * s - (t.get("eval_wall_s") or 0.0)) if ok and wall is not None \
        and s and n else None
    n_test = (res.get("dataset") or {}).get("n_predicted_images")
    batch = t.get("infer_batch_size")
    gpu = {k: mem.get(k) for k in ("train_peak_gpu_mb", "train_reserved_gpu_mb",
                                   "infer_peak_gpu_mb", "infer_reserved_gpu_mb")}
    return {"backbone": res.get("backbone"), "seed": res.get("seed"), "ok": ok,
            "error": None if ok else f"{err.get('type')}: {err.get('message')}"[:300],
            "amp": bool(solver.get("amp")), "iters": n, "ims_per_batch": solver.get("ims_per_batch"),
            "s_per_iter": s, "infer_s_per_image": t.get("infer_s_per_image"),
            "infer_batch": batch, "n_test": n_test,
            "infer_timed": (n_test - batch if n_test > batch else n_test) if n_test and batch else None,
            "infer_warm": bool(n_test and batch and n_test > batch),
            "train_wall_s": t.get("train_wall_s"), "eval_wall_s": t.get("eval_wall_s"),
            "train_span": [t.get("train_started_at"), t.get("train_finished_at")],
            "run_wall_s": wall, "once_s": once,
            "train_mb": gpu["train_peak_gpu_mb"], "train_reserved_mb": gpu["train_reserved_gpu_mb"],
            "infer_mb": gpu["infer_peak_gpu_mb"], "infer_reserved_mb": gpu["infer_reserved_gpu_mb"],
            "rss_mb": mem.get("peak_rss_mb"),
            "peak_mb": _max(gpu["train_reserved_gpu_mb"], gpu["infer_reserved_gpu_mb"])
            or mem.get("peak_gpu_mb") or mem.get("peak_rss_mb"),
            "gpu": (res.get("env") or {}).get("gpu_slot")}


def overlap(runs: Sequence[dict]) -> float | None:
    """How much of their training the runs of one level did at the same time: the time all of
    them were training, over the longest one's training time (1.0: all trained together from
    start to end). None with fewer than two runs with training times."""
    spans = []
    for r in runs:
        a, b = r.get("train_span") or (None, None)
        if a and b:
            spans.append((datetime.fromisoformat(a), datetime.fromisoformat(b)))
    if len(spans) < 2:
        return None
    longest = max((b - a).total_seconds() for a, b in spans)
    common = (min(b for _, b in spans) - max(a for a, _ in spans)).total_seconds()
    return max(0.0, common) / longest if longest > 0 else None


def pack_iterations(alone_s_per_iter: float | None, train_s: float, least: int,
                    most: int = PACK_ITERS_MAX) -> int:
    """Iterations of a packed run: ``train_s`` seconds of training at its k = 1 speed (so it
    trains long after the packed runs' staggered starts), between ``least`` and ``most``."""
    if not alone_s_per_iter or alone_s_per_iter <= 0:
        return least
    return int(min(most, max(least, math.ceil(train_s / alone_s_per_iter))))


def extrapolated_s(run: dict, iters: int, test_images: int, slowdown: float = 1.0,
                   infer_slowdown: float = 1.0) -> float:
    """One run at ``iters`` iterations and ``test_images`` test slices, from its k = 1 run:
    once_s + iters x s/iter x slowdown + test_images x infer s/image x infer_slowdown (the
    slowdowns: what packing cost at the level, 1 alone)."""
    return (run["once_s"] or 0.0) + iters * run["s_per_iter"] * slowdown \
        + test_images * (run["infer_s_per_image"] or 0.0) * infer_slowdown


def summarise(levels: Sequence[dict], iters: int, test_images: int, pack_precision: str) -> dict:
    """Per level (its runs: run_facts dicts, in sweep order): median s/iter; at a packing level
    its slowdown (mean over its runs of s/iter / the same backbone's at k = 1, same precision)
    and inference's, how long its runs trained together (``overlap``); then the grid (every
    backbone of the k = 1 level) at ``iters`` iterations on the level's slots: each backbone's
    k = 1 figures with the level's slowdowns (makespan of extrapolated_s) and runs/hour; one
    after another per precision; the best packing (no failed run) in ``pack_precision``."""
    alone = {lv["precision"]: {r["backbone"]: r for r in lv["runs"] if r["ok"] and r["s_per_iter"]}
             for lv in levels if lv["k"] == 1 and not lv.get("skipped")}
    out: dict[str, Any] = {"iters": iters, "test_images": test_images,
                           "pack_precision": pack_precision, "levels": [], "sequential": {}}
    for lv in levels:
        row = {"precision": lv["precision"], "k": lv["k"], "skipped": lv.get("skipped")}
        out["levels"].append(row)
        if lv.get("skipped"):
            continue
        ok = [r for r in lv["runs"] if r["ok"] and r["s_per_iter"]]
        base = alone.get(lv["precision"], {})
        ratios = [r["s_per_iter"] / base[r["backbone"]]["s_per_iter"] for r in ok if r["backbone"] in base]
        iratios = [r["infer_s_per_image"] / base[r["backbone"]]["infer_s_per_image"] for r in ok
                   if r["backbone"] in base and r["infer_s_per_image"]
                   and base[r["backbone"]]["infer_s_per_image"]]
        if lv["k"] == 1:
            slow, islow = (1.0, 1.0) if ok else (None, None)
        else:
            slow = sum(ratios) / len(ratios) if ratios else None
            islow = sum(iratios) / len(iratios) if iratios else slow
        complete = bool(ok) and len(ok) == len(lv["runs"]) and not lv.get("cut_short") \
            and slow is not None and bool(base)
        d = [extrapolated_s(b, iters, test_images, slow, islow) for b in base.values()] if complete else []
        row.update(n=len(lv["runs"]), failed=len(lv["runs"]) - len(ok),
                   median_s_per_iter=median(r["s_per_iter"] for r in ok),
                   slowdown=slow, infer_slowdown=islow,
                   overlap=overlap(ok) if lv["k"] > 1 else None,
                   peak_mb=max((r["peak_mb"] for r in ok if r["peak_mb"]), default=None),
                   grid_runs=len(d),
                   grid_min=makespan(d, lv["slots"]) / 60 if d else None,
                   runs_per_hour=3600.0 * lv["slots"] * len(d) / sum(d) if d else None)
        if lv["k"] == 1:
            out["sequential"][lv["precision"]] = row["grid_min"]
    best = [r for r in out["levels"] if r["precision"] == pack_precision and r.get("grid_min")]
    best = min(best, key=lambda r: r["grid_min"], default=None)
    out["best_k"] = best["k"] if best else None
    out["best_min"] = best["grid_min"] if best else None
    seq = out["sequential"].get("fp32")
    out["speedup_vs_fp32"] = seq / best["grid_min"] if best and seq else None
    return out


# --------------------------------------------------------------------------- pure: the table


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"
    return str(x)


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _mb2(alloc: float | None, reserved: float | None) -> str:
    return "-" if alloc is None and reserved is None else f"{_mb(alloc)} / {_mb(reserved)}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def render(doc: dict) -> str:
    """The report: machine and settings, per backbone (k=1 runs) next to the zoo, per level."""
    return "\n".join(_head(doc) + _backbone_table(doc) + _packing_table(doc) + _problems(doc)
                     + _verdict(doc)) + "\n"


def _head(doc: dict) -> list[str]:
    """Title, machine, how the figures were measured, the zoo's scaling."""
    env, s = doc["env"], doc["settings"]
    gpu = env["device"] == "cuda"
    zoo = doc["zoo"]
    per_gpu = zoo["images_per_iter"] // zoo["gpus"]
    machine = (f"{env.get('gpus')}x {env.get('gpu')} ({_mb(env.get('gpu_memory_mb'))} MiB), driver "
               f"{env.get('driver')} (CUDA {env.get('driver_cuda') or '?'})") if gpu else "CPU"
    lines = [
        f"# GPU check{' (dry run)' if doc['dry_run'] else ''}", "",
        f"{doc['measured_at']} on {machine}; torch {env.get('torch')} (CUDA "
        f"{env.get('torch_cuda') or '-'}, cuDNN {env.get('cudnn') or '-'}), detectron2 "
        f"{env.get('detectron2')}, Python {env.get('python')}, {env['cpu_count']} CPU cores; "
        f"`{doc['command']}`, {doc['wall_s']:.0f} s.", "",
    ]
    if not doc.get("finished"):
        lines += [f"**Partial**: written after {doc.get('written_after') or 'the start'}; "
                  f"{doc.get('stopped') or 'the check was still running'}.", ""]
    lines += [
        f"Phantom {s['image_size']} px ({s['n_train_images']} train / {s['n_test_images']} test "
        f"slices). k = 1: `python -m benchmark.sweep +experiment=grid9 hydra/launcher=joblib "
        f"jobs_per_gpu=1 solver.max_iter={s['iters']} solver={s['solver']} weights={s['weights']}"
        f"{(' ' + ' '.join(s['overrides'])) if s['overrides'] else ''}` (IMS_PER_BATCH "
        f"{s['ims_per_batch']}, input {s['input_size']}); every figure from the runs' result.json "
        f"(kept under runs/): train s/iter = `timing.train_s_per_iter` (median after "
        f"`measure.warmup_iters`); inference = `timing.infer_s_per_image`, the median over "
        f"batches of {s['infer_batch']} image(s) after the first (warm-up) batch: "
        f"{s.get('infer_timed') if s.get('infer_timed') is not None else '-'} of "
        f"{s.get('n_predicted') or '-'} test images timed"
        f"{' (NO batch after the warm-up one: every batch timed, warm-up included)' if s.get('infer_warm') is False else ''}; "
        + ("memory = the GPU peaks of training and of inference apart, `memory.train_*` / "
           "`infer_*`, allocated / reserved MiB." if gpu else "memory = `memory.peak_rss_mb`."), "",
        f"Zoo: detectron2 MODEL_ZOO ({zoo['gpus']}x {zoo['gpu']}, {zoo['images_per_iter']} "
        f"images/iter = {per_gpu} per GPU); its s/iter scaled by IMS_PER_BATCH / {per_gpu} = "
        f"{s['ims_per_batch'] / per_gpu:g}; its inference is batch 1, its memory (allocated) "
        f"per GPU in training at {per_gpu} images. COCO images resize to ~800x1200: more pixels "
        "than here.", "",
    ]
    return lines


def _backbone_table(doc: dict) -> list[str]:
    """Per backbone: its k = 1 figures, fp32 and AMP, next to the zoo's."""
    gpu = doc["env"]["device"] == "cuda"
    if gpu:
        lines = ["| backbone | train s/iter fp32 | AMP | AMP speed-up | zoo s/iter | fp32 / zoo "
                 "| infer s/img | zoo infer | train MiB fp32 (alloc / reserved) | train MiB AMP "
                 "| infer MiB fp32 | zoo train MiB |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    else:
        lines = ["| backbone | train s/iter fp32 | AMP | AMP speed-up | zoo s/iter | fp32 / zoo "
                 "| infer s/img | zoo infer | peak RSS MiB | zoo train MiB |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for b in doc["backbones"]:
        fp, amp, z = b.get("fp32") or {}, b.get("amp") or {}, b.get("zoo") or {}
        t, ta, tz = fp.get("s_per_iter"), amp.get("s_per_iter"), z.get("train_s_per_iter")
        mem = (f"| {_mb2(fp.get('train_mb'), fp.get('train_reserved_mb'))} "
               f"| {_mb2(amp.get('train_mb'), amp.get('train_reserved_mb'))} "
               f"| {_mb2(fp.get('infer_mb'), fp.get('infer_reserved_mb'))} ") if gpu else \
            f"| {_mb(fp.get('rss_mb'))} "
        lines.append(
            f"| {b['name']} | {_f(t) if fp.get('ok') else 'FAILED' if fp else '-'} "
            f"| {_f(ta) if amp.get('ok') else 'FAILED' if amp else b.get('amp_note', '-')} "
            f"| {_f(t / ta, 2) + 'x' if t and ta else '-'} | {_f(tz)} "
            f"| {_f(t / tz, 2) + 'x' if t and tz else '-'} | {_f(fp.get('infer_s_per_image'))} "
            f"| {_f(z.get('infer_s_per_image'))} {mem}| {_mb(z.get('train_mem_mb'))} |")
    return lines


def _packing_table(doc: dict) -> list[str]:
    """How the packing levels were run, and their figures (in the packing precision)."""
    summ, gpu = doc["summary"], doc["env"]["device"] == "cuda"
    per = "GPU" if gpu else "CPU"
    pb = display_name(doc["plan"].get("pack_backbone") or "r50_fpn")
    lines = [
        "", f"Packing ({summ['pack_precision']}): k runs per {per} at once"
        f"{', each holding one of GPUs x k slots (`benchmark/training/gpus.py`)' if gpu else ''}: at k > 1, "
        f"{pb} with seeds 0..k-1 (equal runs, started together), each trained long enough to run "
        f"alongside the others (iterations: {doc['plan'].get('pack_train_s'):g} s at its k = 1 "
        "speed); DataLoader workers as the sweep sizes them. Slowdown = mean over the runs of "
        "s/iter / the same backbone's at k = 1; trained together = the time all of them trained "
        "at once / the longest one's training (below "
        f"{100 * MIN_OVERLAP:.0f} % the slowdown is optimistic). Grid: every backbone of the k = 1 "
        f"sweep at {summ['iters']} iterations and {summ['test_images']} test slices, from its "
        "k = 1 figures with the level's slowdowns (paid once + iterations + inference), runs "
        "started in sweep order whenever a slot frees; metrics time not included.", "",
        f"| runs per {per} | runs | iterations | median s/iter per run | slowdown | infer slowdown "
        f"| trained together | sweep wall s | {'GPU MiB per run (max reserved)' if gpu else 'peak RSS MiB per run'} "
        f"| GPU MiB all runs (max) | GPU util % (median) | grid min | grid runs/hour |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = {(r["precision"], r["k"]): r for r in summ["levels"]}
    for lv in doc["levels"]:
        if lv["precision"] != summ["pack_precision"]:
            continue
        r = rows[(lv["precision"], lv["k"])]
        if r.get("skipped"):
            lines.append(f"| {lv['k']} | skipped: {r['skipped']} |" + " |" * 11)
            continue
        failed = f" ({r['failed']} FAILED)" if r["failed"] else ""
        ov = r.get("overlap")
        short = " (short)" if ov is not None and ov < MIN_OVERLAP else ""
        lines.append(
            f"| {lv['k']} | {r['n']}{failed} | {lv.get('iters', '-')} | {_f(r['median_s_per_iter'])} "
            f"| {_f(r['slowdown'])} | {_f(r['infer_slowdown'])} | {_pct(ov)}{short} "
            f"| {lv['wall_s']:.0f}{' (cut short)' if lv.get('cut_short') else ''} "
            f"| {_mb(r['peak_mb'])} | {_mb(lv.get('gpu_mem_max_mb'))} "
            f"| {_f(lv.get('gpu_util_median'))} | {_f(r['grid_min'])} | {_f(r['runs_per_hour'])} |")
    return lines


def _problems(doc: dict) -> list[str]:
    """Each failed run, each level's error, and CUDA runs without a recorded GPU slot."""
    gpu = doc["env"]["device"] == "cuda"
    lines = []
    for lv in doc["levels"]:
        for run in lv.get("runs", []):
            if not run["ok"]:
                lines.append(f"\n{lv['precision']} k={lv['k']} {run['backbone']} failed: "
                             f"{run['error']}")
        if lv.get("error"):
            lines.append(f"\n{lv['precision']} k={lv['k']}: {lv['error']}")
        unslotted = [r["backbone"] for r in lv.get("runs", []) if r["ok"] and r["gpu"] is None]
        if gpu and unslotted:  # under joblib on CUDA every run records its slot's GPU
            lines.append(f"\n{lv['precision']} k={lv['k']}: no env.gpu_slot in {', '.join(unslotted)}")
    return lines


def _verdict(doc: dict) -> list[str]:
    """The grid's time one after another and packed, the best packing against the target."""
    summ = doc["summary"]
    per = "GPU" if doc["env"]["device"] == "cuda" else "CPU"
    n = sum(bool(b.get("fp32") or b.get("amp")) for b in doc["backbones"])
    what = "all nine backbones" if n == 9 else "NOT the full grid"
    lines = ["", f"Sweep of the {n} backbone(s) above x {summ['iters']} iterations ({what}):", ""]
    for prec, v in summ["sequential"].items():
        lines.append(f"- one after another, {prec}: {_f(v)} min")
    for r in summ["levels"]:
        if r["precision"] == summ["pack_precision"] and r["k"] > 1 and r.get("grid_min"):
            lines.append(f"- {r['k']} per {per}, {r['precision']}: "
                         f"{_f(r['grid_min'])} min (slowdown {_f(r['slowdown'])})")
    if summ["best_k"]:
        verdict = "meets" if summ["best_min"] < TARGET_MIN else "MISSES"
        lines.append(f"- best: {summ['best_k']} per {per}, {_f(summ['best_min'])} min, "
                     f"{_f(summ['speedup_vs_fp32'], 2)}x faster than one after another in fp32; "
                     f"{verdict} the < {TARGET_MIN:g} min target")
        amp = " amp=true" if summ["pack_precision"] == "amp" else ""
        lines.append(f"- to run it so: `make sweep ARGS='hydra/launcher=joblib "
                     f"jobs_per_gpu={summ['best_k']}{amp}'`")
    if doc["skipped"]:
        lines += ["", "Skipped or cut short: " + "; ".join(doc["skipped"])]
    return lines


def backbone_rows(levels: Sequence[dict], backbones: Sequence[str], zoo: dict,
                  ims_per_batch: int, amp_note: str | None) -> list[dict]:
    """Per backbone: its k=1 fp32 and AMP run_facts and the zoo's figures."""
    alone = {lv["precision"]: {r["backbone"]: r for r in lv["runs"]}
             for lv in levels if lv["k"] == 1 and not lv.get("skipped")}
    rows = []
    for key in backbones:
        name = display_name(key)
        row = {"key": key, "name": name, "zoo": zoo_figures(zoo, name, ims_per_batch),
               "fp32": alone.get("fp32", {}).get(name), "amp": alone.get("amp", {}).get(name)}
        if amp_note:
            row["amp_note"] = amp_note
        rows.append(row)
    return rows


def sweep_command(k: int, precision: str, *, iters: int, solver: str, weights: str,
                  backbones: Sequence[str], dataset: Path, sweep_dir: Path, device: str,
                  seeds: int | None = None, overrides: Sequence[str] = ()) -> list[str]:
    """The harness's sweep for one level: ``backbones`` x (``seeds``: seed=0..seeds-1 where
    given), k runs per GPU (on a CPU, n_jobs = k by hand: the launcher's own default there
    is 2)."""
    return [sys.executable, "-m", "benchmark.sweep", "+experiment=grid9",
            f"backbone={','.join(backbones)}", *([f"seed={','.join(map(str, range(seeds)))}"]
                                                 if seeds else []),
            "hydra/launcher=joblib", f"jobs_per_gpu={k}",
            f"solver={solver}", f"weights={weights}", f"solver.max_iter={iters}",
            f"amp={str(precision == 'amp').lower()}", f"device={device}", "measure.flops=false",
            f"dataset_dir={dataset}", f"hydra.sweep.dir={sweep_dir}",
            *([f"hydra.launcher.n_jobs={k}"] if device == "cpu" else []), *overrides]


# --------------------------------------------------------------------------- running


def _say(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _nvidia_smi(query: str) -> list[list[str]]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[x.strip() for x in line.split(",")] for line in out.strip().splitlines()]


def _sample(stop: threading.Event, samples: list) -> None:
    """(mean utilisation %, memory used MiB over all GPUs) every 0.5 s until ``stop``."""
    while not stop.wait(0.5):
        try:
            rows = [[float(x) for x in r] for r in _nvidia_smi("utilization.gpu,memory.used")]
        except ValueError:
            continue
        if rows:
            samples.append((sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows)))


#: set by SIGTERM/SIGINT: the running sweep is stopped, the figures so far written, exit 143
STOP = threading.Event()


def _stop_sweep(proc: subprocess.Popen, grace_s: float) -> int:
    """SIGTERM to the sweep's process group (its runs record "Terminated" in their
    result.json), SIGKILL after ``grace_s``; its exit code."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.wait()


def read_level(sweep_dir: Path, rc: int | None, log: Path) -> dict:
    """The sweep's runs' result.json in sweep order (its sweep.json, through their readers); a
    planned run without one is "missing"."""
    from contracts.result import ResultUnreadable, read_result
    from contracts.sweep import PlanError, read_plan

    try:
        plan = read_plan(sweep_dir)
    except PlanError as e:
        plan, why = None, str(e)
    else:
        why = "no sweep.json"
    if plan is None:
        tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
        return {"results": [], "error": f"{why} (exit {rc}): {tail}"}
    results = []
    for r in plan:
        try:
            found = read_result(sweep_dir / r["run_dir"])
        except ResultUnreadable as e:
            found, unreadable = None, str(e)
        else:
            unreadable = "no result.json"
        results.append(found.data if found is not None else
                       {"backbone": r.get("backbone") or r["label"], "status": "missing",
                        "error": {"type": "Missing", "message": unreadable}})
    return {"results": results}


def run_level(cmd: list[str], sweep_dir: Path, log: Path, timeout_s: float, env: dict,
              grace_s: float = GRACE_S) -> dict:
    """Run one sweep (its own process group), stopped at ``timeout_s`` or on STOP; its runs'
    result.json in sweep order, wall time, nvidia-smi samples."""
    samples: list = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(stop, samples), daemon=True)
    t0 = time.perf_counter()
    cut = None
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        sampler.start()
        try:
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if STOP.is_set() or time.perf_counter() - t0 >= timeout_s:
                    cut = "stopped (SIGTERM)" if STOP.is_set() else "time budget"
                    rc = _stop_sweep(proc, grace_s)
                    break
        finally:
            if proc.poll() is None:  # an exception here: never leave the sweep running
                _stop_sweep(proc, grace_s)
            stop.set()
            sampler.join()
    lv: dict[str, Any] = {"rc": rc, "wall_s": time.perf_counter() - t0, "cut_short": cut,
                          "gpu_util_median": median(u for u, _ in samples),
                          "gpu_mem_max_mb": max((m for _, m in samples), default=None)}
    lv.update(read_level(sweep_dir, rc, log))
    return lv


def keep_level(sweep_dir: Path, log: Path, dest: Path) -> None:
    """Copy the sweep's sweep.json, every run's result.json and the sweep's log to ``dest``
    (replaced whole: a temp folder, then rename)."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from contracts import result, sweep

    for path in [sweep_dir / sweep.FILENAME, *sorted(sweep_dir.rglob(result.FILENAME))]:
        if path.is_file():
            target = tmp / path.relative_to(sweep_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    if log.is_file():
        shutil.copy2(log, tmp / "sweep.log")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def machine(device: str) -> dict:
    """What the figures were measured on: GPU (nvidia-smi), driver and its CUDA, torch and the
    CUDA/cuDNN it was built with, detectron2, Python, CPU cores. Asks nothing of CUDA itself
    (no context in this process: nvidia-smi's memory figures are the runs' own)."""
    import platform

    import detectron2
    import torch

    from benchmark.cudacheck import driver_cuda

    env: dict[str, Any] = {"device": device, "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "cudnn": None,
                           "detectron2": detectron2.__version__,
                           "python": platform.python_version(), "cpu_count": os.cpu_count(),
                           "gpus": 0, "gpu": None, "gpu_memory_mb": None, "driver": None,
                           "driver_cuda": None}
    if device == "cuda":
        rows = _nvidia_smi("name,driver_version,memory.total")
        env.update(gpus=len(rows) or None, driver_cuda=driver_cuda(),
                   cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
        if rows:
            env.update(gpu=rows[0][0], driver=rows[0][1],
                       gpu_memory_mb=float(rows[0][2]) if rows[0][2].replace(".", "").isdigit() else None)
    return env


def make_dataset(work: Path, size: int, cases: int, slices: int) -> Path:
    """The phantom (``cases`` x ``size`` px x ``slices``), converted; patient k-fold with
    k = cases (fold 0 tests one case)."""
    from converters import phantom
    from converters.convert import convert

    raw = phantom.generate(work / "raw", preset="tiny", seed=0, n_cases=cases, size=size,
                           slices=slices)
    return convert(raw, work / "data", {"workers": min(cases, os.cpu_count() or 1),
                                        "splits": {"patient_kfold": {"k": cases},
                                                   "slice_random": {"enabled": False}}})


def write_report(doc: dict, out: Path, t0: float, ok: dict, zoo: dict) -> str:
    """Fill the derived sections of ``doc`` from its levels so far and write gpu_check.json and
    gpu_check.md into ``out`` (each a temp file, then rename). Returns the Markdown."""
    from contracts.fsutil import write_text

    plan = doc["plan"]
    ims = (ok.get("solver") or {}).get("ims_per_batch") or 2
    first = next((r for lv in doc["levels"] if lv["k"] == 1 for r in lv.get("runs", []) if r["ok"]), {})
    doc["settings"] = {"image_size": plan["size"], "solver": plan["solver"], "weights": doc["weights"],
                       "iters": plan["iters"], "overrides": doc["overrides"], "ims_per_batch": ims,
                       "input_size": ((ok.get("config") or {}).get("solver") or {}).get("input_size"),
                       "infer_batch": (ok.get("timing") or {}).get("infer_batch_size"),
                       "infer_timed": first.get("infer_timed"), "infer_warm": first.get("infer_warm"),
                       "n_predicted": first.get("n_test"),
                       **{f"n_{p}_images": (ok.get("dataset") or {}).get(f"n_{p}_images")
                          for p in ("train", "test")}}
    doc["zoo"] = {k: zoo[k] for k in ("source", "gpu", "gpus", "images_per_iter")}
    doc["backbones"] = backbone_rows(doc["levels"], plan["backbones"], zoo, ims,
                                     None if doc["env"]["device"] == "cuda" else "n/a: AMP needs CUDA")
    doc["summary"] = summarise(doc["levels"], doc["sweep_iters"], doc["test_images"], doc["pack"])
    doc["wall_s"] = time.perf_counter() - t0
    md = render(doc)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "gpu_check.json", json.dumps(doc, indent=1, default=str))
    write_text(out / "gpu_check.md", md)
    return md


def _on_signal(signum, frame) -> None:
    STOP.set()


def arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (CI)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where gpu_check.md/.json and runs/ go (default perf/gpu; dry run "
                         "work/gpu_check_dry)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="the check stops inside this many seconds from its start (GPU: 420)")
    ap.add_argument("--backbones", default=None, help="comma list (default: the plan's)")
    ap.add_argument("--levels", default=None, help="runs per GPU, e.g. 1,2,4,8")
    ap.add_argument("--iters", type=int, default=None, help="solver.max_iter of each k = 1 run")
    ap.add_argument("--pack-iters", type=int, default=None,
                    help="solver.max_iter of each packed run (default: --pack-train-s at k = 1 speed)")
    ap.add_argument("--pack-train-s", type=float, default=None,
                    help="seconds a packed run would train alone (sets its iterations)")
    ap.add_argument("--pack-backbone", default=None, help="the backbone packed at k > 1 (r50_fpn)")
    ap.add_argument("--size", type=int, default=None, help="phantom slice size in pixels")
    ap.add_argument("--slices", type=int, default=None, help="phantom slices per case")
    ap.add_argument("--solver", default=None, help="conf/solver: paper | smoke")
    ap.add_argument("--weights", default="scratch",
                    help="conf/weights (scratch: nothing to download; zoo where cached)")
    ap.add_argument("--pack-precision", default="auto", choices=["auto", "fp32", "amp"])
    ap.add_argument("--cudnn-benchmark", action="store_true", help="cudnn_benchmark=true")
    ap.add_argument("--sweep-iters", type=int, default=5000)
    ap.add_argument("--test-images", type=int, default=TEST_IMAGES)
    ap.add_argument("--work", type=Path, default=None, help="keep the runs in a folder in DIR")
    ap.add_argument("overrides", nargs="*", help="more Hydra overrides for every run")
    return ap


def make_plan(ap: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """GPU_PLAN (DRY_PLAN with --dry-run) with the options given; a bad one ends in ap.error."""
    plan = dict(DRY_PLAN if args.dry_run else GPU_PLAN)
    for key in ("size", "slices", "solver", "iters", "budget_s", "pack_train_s", "pack_backbone"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    if args.backbones:
        plan["backbones"] = args.backbones.split(",")
        if set(plan["backbones"]) - set(GRID9):
            ap.error(f"unknown backbone(s); choose from {GRID9}")
    if plan["pack_backbone"] not in GRID9:
        ap.error(f"--pack-backbone {plan['pack_backbone']!r}: choose from {GRID9}")
    if args.levels:
        plan["levels"] = sorted({int(x) for x in args.levels.split(",")} | {1})
    return plan


def usable_device(dry_run: bool) -> str | None:
    """The device to measure on: cuda, or cpu for a dry run; None (and why, said) with a GPU
    that torch cannot use, or without CUDA for the full-size check."""
    from benchmark.training.config import resolve_device
    from contracts.errors import ConfigError

    try:
        device = resolve_device("auto")
    except ConfigError as e:  # a GPU that torch cannot use: say so, measure nothing
        _say(str(e))
        return None
    if not dry_run and device != "cuda":
        _say("no CUDA device: the full-size check on a CPU takes hours; use --dry-run")
        return None
    return device


def fresh_dirs(out: Path, keep_in: Path | None) -> tuple[Path, Path]:
    """(``out``/runs, emptied: the previous check's runs go to runs.previous, kept once and
    never mixed with these; a new work folder, in ``keep_in`` where given, else a temp one)."""
    out.mkdir(parents=True, exist_ok=True)
    runs_out = out / "runs"
    if runs_out.exists():
        shutil.rmtree(out / "runs.previous", ignore_errors=True)
        os.replace(runs_out, out / "runs.previous")
    if keep_in:  # kept; a fresh folder in it each time (a sweep resumes finished runs)
        keep_in.mkdir(parents=True, exist_ok=True)
    return runs_out, Path(tempfile.mkdtemp(prefix="lungbench-gpu-check-", dir=keep_in))


def skip_reason(left: float, k: int, last: float | None) -> str | None:
    """Why a level with ``left`` seconds of budget is not run (None: it is): stopped, too
    little time, or at k > 1 less than the last packing level took (``last``)."""
    if not (STOP.is_set() or left < 10 or (k > 1 and last and left < last)):
        return None
    if STOP.is_set():
        return "stopped (SIGTERM)"
    return f"time budget ({max(0, left):.0f} s left" + (f", ~{last:.0f} s needed)"
                                                        if k > 1 and last else ")")


def level_runs(lv: dict, doc: dict, pack_iters: int | None) -> tuple[list[str], int | None, int]:
    """(backbones, seeds, iterations) of level ``lv``: at k = 1 the plan's backbones; packed,
    ``lv["slots"]`` equal runs of the pack backbone, started together, long enough to train
    alongside each other (``pack_iters``, else its k = 1 speed)."""
    plan = doc["plan"]
    if lv["k"] == 1:
        return plan["backbones"], None, plan["iters"]
    pb = display_name(plan["pack_backbone"])
    alone = next((r["s_per_iter"] for a in doc["levels"] if a["k"] == 1 and
                  a["precision"] == lv["precision"] for r in a.get("runs", [])
                  if r["ok"] and r["backbone"] == pb), None)
    return ([plan["pack_backbone"]], lv["slots"],
            pack_iters or pack_iterations(alone, plan["pack_train_s"], plan["iters"]))


def measure_level(lv: dict, cmd: list[str], work: Path, runs_out: Path, left: float,
                  env: dict) -> list[dict]:
    """Run level ``lv``'s sweep ``cmd``, keep its files under ``runs_out`` and record its runs
    in ``lv``; returns their result.json contents."""
    name = f"{lv['precision']}_k{lv['k']}"
    sweep_dir, log = work / "sweeps" / name, work / f"{name}.log"
    lv.update(run_level(cmd, sweep_dir, log, left, env))
    if lv["rc"] and not lv["cut_short"]:
        print(log.read_text(errors="replace")[-2000:], flush=True)  # the sweep's own words
    keep_level(sweep_dir, log, runs_out / name)
    results = lv.pop("results")
    lv["runs"] = [run_facts(r) for r in results]
    return results


def new_doc(args: argparse.Namespace, argv: list[str], plan: dict, env: dict,
            overrides: list[str], pack: str) -> dict[str, Any]:
    """gpu_check.json before any level: what is measured, how, on what."""
    return {"schema": 3, "dry_run": args.dry_run, "finished": False, "written_after": None,
            "stopped": None, "command": " ".join(["perf/gpu_check.sh", *argv]),
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "plan": plan, "env": env, "weights": args.weights, "overrides": overrides,
            "pack": pack, "sweep_iters": args.sweep_iters, "test_images": args.test_images,
            "levels": [], "skipped": []}


def exit_status(doc: dict) -> int:
    """143 when stopped by a signal; 1 when a level was skipped, cut short or failed; else 0."""
    if STOP.is_set():
        return 143
    bad = [f"{lv['precision']} k={lv['k']}" for lv in doc["levels"]
           if lv.get("skipped") or lv.get("cut_short") or lv.get("error")
           or any(not r["ok"] for r in lv.get("runs", []))]
    if bad:
        _say("FAILED or not measured: " + ", ".join(bad))
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser()
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    plan = make_plan(ap, args)
    overrides = list(args.overrides) + (["cudnn_benchmark=true"] if args.cudnn_benchmark else [])
    out = args.out or REPO / ("work/gpu_check_dry" if args.dry_run else "perf/gpu")

    device = usable_device(args.dry_run)
    if device is None:
        return 2
    if args.pack_precision == "amp" and device != "cuda":
        ap.error("--pack-precision amp needs CUDA")
    pack = args.pack_precision if args.pack_precision != "auto" else \
        "amp" if device == "cuda" else "fp32"
    env_machine = machine(device)
    gpus = env_machine["gpus"] or (1 if device == "cuda" else 0)
    levels = [("fp32", 1)] + ([("amp", 1)] if device == "cuda" else [])
    levels += [(pack, k) for k in plan["levels"] if k > 1]

    runs_out, work = fresh_dirs(out, args.work)
    env = dict(os.environ, PYTHONUNBUFFERED="1", LUNGBENCH_GPU_SLOTS=str(work / "slots"))
    doc = new_doc(args, sys.argv[1:] if argv is None else argv, plan, env_machine, overrides, pack)
    zoo = load_zoo()
    ok: dict = {}  # the first ok result.json: settings
    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _say(f"{env_machine.get('gpu') or 'CPU'}; torch {env_machine['torch']} (CUDA "
             f"{env_machine['torch_cuda']}); phantom {plan['size']} px; levels {levels}; "
             f"budget {plan['budget_s']:.0f} s; work dir {work}")
        write_report(doc, out, t0, ok, zoo)
        dataset = make_dataset(work, plan["size"], plan["cases"], plan["slices"])
        last = None  # wall of the last packing level: what the next one needs
        for prec, k in levels:
            lv: dict[str, Any] = {"precision": prec, "k": k, "slots": k * max(1, gpus)}
            doc["levels"].append(lv)
            left = plan["budget_s"] - (time.perf_counter() - t0) - GRACE_S
            if skipped := skip_reason(left, k, last):
                lv["skipped"] = skipped
                doc["skipped"].append(f"{prec} k={k}")
                continue
            backbones, seeds, lv["iters"] = level_runs(lv, doc, args.pack_iters)
            cmd = sweep_command(k, prec, iters=lv["iters"], solver=plan["solver"],
                                weights=args.weights, backbones=backbones, dataset=dataset,
                                sweep_dir=work / "sweeps" / f"{prec}_k{k}", device=device,
                                seeds=seeds, overrides=overrides)
            _say(f"{prec} k={k}: " + " ".join(cmd[2:]))
            results = measure_level(lv, cmd, work, runs_out, left, env)
            ok = ok or next((r for r in results if r.get("status") == "ok"), {})
            if lv["cut_short"]:
                doc["skipped"].append(f"{prec} k={k} cut short ({lv['cut_short']})")
            # a packing level's wall: what the next (larger) one needs at least; the k = 1 sweeps
            # run all nine backbones and say nothing about one wave of equal runs
            last = lv["wall_s"] if prec == pack and k > 1 else last
            doc["written_after"] = f"{prec} k={k}"
            write_report(doc, out, t0, ok, zoo)
            _say(f"{prec} k={k}: {sum(r['ok'] for r in lv['runs'])}/{len(lv['runs'])} runs ok "
                 f"in {lv['wall_s']:.0f} s; {out / 'gpu_check.md'} written")
        doc["finished"] = not STOP.is_set()
        if STOP.is_set():
            doc["stopped"] = "stopped by SIGTERM/SIGINT"
    except BaseException as e:
        doc["stopped"] = f"stopped by {type(e).__name__}: {e}"[:300]
        raise
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        md = write_report(doc, out, t0, ok, zoo)  # also after an error: what was measured
    print(md)
    _say(f"wrote {out / 'gpu_check.md'}, gpu_check.json and runs/ in {doc['wall_s']:.0f} s")
    return exit_status(doc)


if __name__ == "__main__":
    sys.exit(main())
