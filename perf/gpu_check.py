"""The GPU check: per-backbone speed and memory next to detectron2's zoo, and how many runs one
GPU should hold at once, measured with the harness's own sweeps. Run it through
``perf/gpu_check.sh`` (perf/GPU.md), or directly::

    python -m perf.gpu_check [--dry-run] [--out DIR] [--levels 1,2,4,8] [hydra overrides ...]

It generates the phantom, then runs one short sweep per packing level k,
``python -m benchmark.sweep +experiment=grid9 hydra/launcher=joblib jobs_per_gpu=k
solver.max_iter=N ...`` (k = 1 once per precision), and builds its table from the result.json
every run writes: ``timing.train_s_per_iter``, ``infer_s_per_image``, ``train_wall_s``,
``eval_wall_s``, ``memory.*``, ``env.gpu_slot``. Nothing here trains a model itself.
Writes ``gpu_check.md`` + ``gpu_check.json`` into ``--out`` and prints the Markdown.
Exit status: 0; 1 if a run failed or a level was cut short; 2 without CUDA (unless --dry-run).
"""

from __future__ import annotations

import argparse
import json
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

from converters.catalog import BACKBONES, conf_name

REPO = Path(__file__).resolve().parent.parent
ZOO_JSON = Path(__file__).with_name("zoo.json")
TARGET_MIN = 45.0  # the goal: grid9 on one large GPU in under 45 minutes
GRID9 = [conf_name(b) for b in BACKBONES]  # the nine conf/backbone options
TEST_IMAGES = 704  # ~ one fifth of the real dataset's 3520 slices: one patient fold's test part
# sizes: phantom (pixels, cases, slices), solver, iterations per run, levels, time budget (s)
GPU_PLAN = dict(size=512, cases=3, slices=10, solver="paper", backbones=GRID9, iters=15,
                levels=[1, 2, 4, 8], budget_s=420.0)
DRY_PLAN = dict(size=64, cases=2, slices=5, solver="smoke", backbones=["r50_fpn", "r50_c4"],
                iters=6, levels=[1, 2], budget_s=900.0)


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


def run_facts(res: dict) -> dict:
    """What the check reads from one run's result.json (seconds, MiB; None where missing).
    ``peak_mb``: the GPU peak where CUDA was used, else the process's peak RSS. ``once_s``: what
    the run paid besides its iterations and inference (imports, model, data loader, metrics):
    its wall time (started_at..finished_at) - max_iter x s/iter - eval_wall_s."""
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
    return {"backbone": res.get("backbone"), "ok": ok,
            "error": None if ok else f"{err.get('type')}: {err.get('message')}"[:300],
            "amp": bool(solver.get("amp")), "iters": n, "ims_per_batch": solver.get("ims_per_batch"),
            "s_per_iter": s, "infer_s_per_image": t.get("infer_s_per_image"),
            "infer_batch": t.get("infer_batch_size"), "train_wall_s": t.get("train_wall_s"),
            "eval_wall_s": t.get("eval_wall_s"), "run_wall_s": wall, "once_s": once,
            "peak_mb": mem.get("peak_gpu_mb") or mem.get("peak_rss_mb"),
            "gpu": (res.get("env") or {}).get("gpu_slot")}


def extrapolated_s(run: dict, iters: int, test_images: int) -> float:
    """One run at ``iters`` iterations and ``test_images`` test slices, from its short run:
    once_s + iters x s/iter + test_images x infer s/image (the packed run's own figures)."""
    return (run["once_s"] or 0.0) + iters * run["s_per_iter"] \
        + test_images * (run["infer_s_per_image"] or 0.0)


def summarise(levels: Sequence[dict], iters: int, test_images: int, pack_precision: str) -> dict:
    """Per level (its runs: run_facts dicts, in sweep order): median s/iter, slowdown (mean over
    its runs of s/iter / the same backbone's at k=1, same precision), the grid at ``iters``
    iterations on its slots (makespan of extrapolated_s) and runs/hour; then one after another
    per precision and the best packing (no failed run) in ``pack_precision``."""
    alone = {lv["precision"]: {r["backbone"]: r["s_per_iter"] for r in lv["runs"] if r["ok"]}
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
        ratios = [r["s_per_iter"] / base[r["backbone"]] for r in ok if base.get(r["backbone"])]
        d = [extrapolated_s(r, iters, test_images) for r in ok]
        complete = bool(ok) and len(ok) == len(lv["runs"]) and not lv.get("cut_short")
        row.update(n=len(lv["runs"]), failed=len(lv["runs"]) - len(ok),
                   median_s_per_iter=median(r["s_per_iter"] for r in ok),
                   slowdown=sum(ratios) / len(ratios) if ratios else None,
                   peak_mb=max((r["peak_mb"] for r in ok if r["peak_mb"]), default=None),
                   grid_min=makespan(d, lv["slots"]) / 60 if complete else None,
                   runs_per_hour=3600.0 * lv["slots"] * len(d) / sum(d) if complete else None)
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


def render(doc: dict) -> str:
    """The report: settings, per backbone (k=1 runs) next to the zoo, per packing level."""
    env, s, summ = doc["env"], doc["settings"], doc["summary"]
    gpu = env["device"] == "cuda"
    mem = "peak GPU MiB" if gpu else "peak RSS MiB"
    zoo = doc["zoo"]
    per_gpu = zoo["images_per_iter"] // zoo["gpus"]
    lines = [
        f"# GPU check{' (dry run)' if doc['dry_run'] else ''}", "",
        f"{doc['measured_at']} on {env.get('gpu') or 'CPU'} ({env['device']}, torch "
        f"{env.get('torch')}, detectron2 {env.get('detectron2')}, Python {env.get('python')}, "
        f"{env['cpu_count']} CPU cores); `{doc['command']}` in {doc['wall_s']:.0f} s.", "",
        f"Phantom {s['image_size']} px ({s['n_train_images']} train / {s['n_test_images']} test "
        f"slices). One sweep per packing level k: `python -m benchmark.sweep +experiment=grid9 "
        f"hydra/launcher=joblib jobs_per_gpu=k solver.max_iter={s['iters']} solver={s['solver']} "
        f"weights={s['weights']}{(' ' + ' '.join(s['overrides'])) if s['overrides'] else ''}` "
        f"(IMS_PER_BATCH {s['ims_per_batch']}, input {s['input_size']}); every figure from the "
        "runs' result.json: train s/iter = `timing.train_s_per_iter` (median after "
        f"`measure.warmup_iters`), inference = `timing.infer_s_per_image` at {s['infer_batch']} "
        f"image(s) per pass, memory = `memory.{'peak_gpu_mb' if gpu else 'peak_rss_mb'}`.", "",
        f"Zoo: detectron2 MODEL_ZOO ({zoo['gpus']}x {zoo['gpu']}, {zoo['images_per_iter']} "
        f"images/iter = {per_gpu} per GPU); its s/iter scaled by IMS_PER_BATCH / {per_gpu} = "
        f"{s['ims_per_batch'] / per_gpu:g}; its inference is batch 1, its memory per GPU at "
        f"{per_gpu} images. COCO images resize to ~800x1200: more pixels than here.", "",
        f"| backbone | train s/iter fp32 | AMP | AMP speed-up | zoo s/iter | fp32 / zoo "
        f"| infer s/img | zoo infer | {mem} fp32 | {mem} AMP | zoo MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in doc["backbones"]:
        fp, amp, z = b.get("fp32") or {}, b.get("amp") or {}, b.get("zoo") or {}
        t, ta, tz = fp.get("s_per_iter"), amp.get("s_per_iter"), z.get("train_s_per_iter")
        lines.append(
            f"| {b['name']} | {_f(t) if fp.get('ok') else 'FAILED' if fp else '-'} "
            f"| {_f(ta) if amp.get('ok') else 'FAILED' if amp else b.get('amp_note', '-')} "
            f"| {_f(t / ta, 2) + 'x' if t and ta else '-'} | {_f(tz)} "
            f"| {_f(t / tz, 2) + 'x' if t and tz else '-'} | {_f(fp.get('infer_s_per_image'))} "
            f"| {_f(z.get('infer_s_per_image'))} | {_mb(fp.get('peak_mb'))} "
            f"| {_mb(amp.get('peak_mb'))} | {_mb(z.get('train_mem_mb'))} |")
    lines += [
        "", f"Packing ({summ['pack_precision']}): k runs per {'GPU' if gpu else 'CPU'} at once"
        f"{', each holding one of GPUs x k slots (`benchmark/gpus.py`)' if gpu else ''}, "
        "DataLoader workers as the sweep sizes them. Slowdown = mean over the runs of s/iter / the same backbone's at k=1. "
        f"Sweep wall: measured, {s['iters']} iterations a run. Grid: the sweep at "
        f"{summ['iters']} iterations and {summ['test_images']} test slices a run, extrapolated "
        "per run from its own figures (what it paid once + iterations + inference), runs "
        "started in sweep order whenever a slot frees; metrics time not included.", "",
        f"| runs per {'GPU' if gpu else 'CPU'} | runs | median s/iter per run | slowdown "
        f"| sweep wall s | {mem} per run (max) | GPU MiB all runs (max) | GPU util % (median) "
        f"| grid min | grid runs/hour |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = {(r["precision"], r["k"]): r for r in summ["levels"]}
    for lv in doc["levels"]:
        if lv["precision"] != summ["pack_precision"]:
            continue
        r = rows[(lv["precision"], lv["k"])]
        if r.get("skipped"):
            lines.append(f"| {lv['k']} | skipped: {r['skipped']} |" + " |" * 8)
            continue
        failed = f" ({r['failed']} FAILED)" if r["failed"] else ""
        lines.append(
            f"| {lv['k']} | {r['n']}{failed} | {_f(r['median_s_per_iter'])} | {_f(r['slowdown'])} "
            f"| {lv['wall_s']:.0f}{' (cut short)' if lv.get('cut_short') else ''} "
            f"| {_mb(r['peak_mb'])} | {_mb(lv.get('gpu_mem_max_mb'))} "
            f"| {_f(lv.get('gpu_util_median'))} | {_f(r['grid_min'])} | {_f(r['runs_per_hour'])} |")
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
    n = sum(bool(b.get("fp32") or b.get("amp")) for b in doc["backbones"])
    what = "all nine backbones" if n == 9 else "NOT the full grid"
    lines += ["", f"Sweep of the {n} backbone(s) above x {summ['iters']} iterations ({what}):", ""]
    for prec, v in summ["sequential"].items():
        lines.append(f"- one after another, {prec}: {_f(v)} min")
    for r in summ["levels"]:
        if r["precision"] == summ["pack_precision"] and r["k"] > 1 and r.get("grid_min"):
            lines.append(f"- {r['k']} per {'GPU' if gpu else 'CPU'}, {r['precision']}: "
                         f"{_f(r['grid_min'])} min (slowdown {_f(r['slowdown'])})")
    if summ["best_k"]:
        verdict = "meets" if summ["best_min"] < TARGET_MIN else "MISSES"
        lines.append(f"- best: {summ['best_k']} per {'GPU' if gpu else 'CPU'}, {_f(summ['best_min'])} min, "
                     f"{_f(summ['speedup_vs_fp32'], 2)}x faster than one after another in fp32; "
                     f"{verdict} the < {TARGET_MIN:g} min target")
        amp = " amp=true" if summ["pack_precision"] == "amp" else ""
        lines.append(f"- to run it so: `make sweep ARGS='hydra/launcher=joblib "
                     f"jobs_per_gpu={summ['best_k']}{amp}'`")
    if doc["skipped"]:
        lines += ["", "Skipped or cut short (time budget): " + "; ".join(doc["skipped"])]
    return "\n".join(lines) + "\n"


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
                  overrides: Sequence[str] = ()) -> list[str]:
    """The harness's sweep for one packing level (on a CPU, n_jobs = k by hand: the
    launcher's own default there is 2)."""
    return [sys.executable, "-m", "benchmark.sweep", "+experiment=grid9",
            f"backbone={','.join(backbones)}", "hydra/launcher=joblib", f"jobs_per_gpu={k}",
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


def run_level(cmd: list[str], sweep_dir: Path, log: Path, timeout_s: float, env: dict) -> dict:
    """Run one sweep (its own process group, killed at ``timeout_s``); its runs' result.json
    in sweep order (sweep.json), wall time, nvidia-smi samples."""
    samples: list = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(stop, samples), daemon=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        sampler.start()
        cut = False
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            cut = True
            os.killpg(proc.pid, signal.SIGTERM)  # our own sweep: its runs record "Terminated"
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    lv: dict[str, Any] = {"rc": rc, "wall_s": wall, "cut_short": cut, "results": [],
                          "gpu_util_median": median(u for u, _ in samples),
                          "gpu_mem_max_mb": max((m for _, m in samples), default=None)}
    try:
        plan = json.loads((sweep_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        lv["error"] = f"no sweep.json (exit {rc}): {log.read_text()[-600:]}"
        return lv
    for r in plan["runs"]:
        try:
            lv["results"].append(json.loads((sweep_dir / r["run_dir"] / "result.json").read_text()))
        except (OSError, ValueError):
            lv["results"].append({"backbone": r["label"], "status": "missing",
                                  "error": {"type": "Missing", "message": "no result.json"}})
    return lv


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (CI)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where gpu_check.md/.json go (default perf/gpu; dry run work/gpu_check_dry)")
    ap.add_argument("--budget-s", type=float, default=None, help="time budget of the sweeps")
    ap.add_argument("--backbones", default=None, help="comma list (default: the plan's)")
    ap.add_argument("--levels", default=None, help="runs per GPU, e.g. 1,2,4,8")
    ap.add_argument("--iters", type=int, default=None, help="solver.max_iter of each run")
    ap.add_argument("--size", type=int, default=None, help="phantom slice size in pixels")
    ap.add_argument("--solver", default=None, help="conf/solver: paper | smoke")
    ap.add_argument("--weights", default="scratch",
                    help="conf/weights (scratch: nothing to download; zoo where cached)")
    ap.add_argument("--pack-precision", default="auto", choices=["auto", "fp32", "amp"])
    ap.add_argument("--cudnn-benchmark", action="store_true", help="cudnn_benchmark=true")
    ap.add_argument("--sweep-iters", type=int, default=5000)
    ap.add_argument("--test-images", type=int, default=TEST_IMAGES)
    ap.add_argument("--work", type=Path, default=None, help="keep the runs in a folder in DIR")
    ap.add_argument("overrides", nargs="*", help="more Hydra overrides for every run")
    args = ap.parse_args(argv)

    plan = dict(DRY_PLAN if args.dry_run else GPU_PLAN)
    for key in ("size", "solver", "iters", "budget_s"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    if args.backbones:
        plan["backbones"] = args.backbones.split(",")
        if set(plan["backbones"]) - set(GRID9):
            ap.error(f"unknown backbone(s); choose from {GRID9}")
    if args.levels:
        plan["levels"] = sorted({int(x) for x in args.levels.split(",")} | {1})
    overrides = list(args.overrides) + (["cudnn_benchmark=true"] if args.cudnn_benchmark else [])
    out = args.out or REPO / ("work/gpu_check_dry" if args.dry_run else "perf/gpu")
    out.mkdir(parents=True, exist_ok=True)
    if args.work:  # kept; a fresh folder in it each time (a sweep resumes finished runs)
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lungbench-gpu-check-", dir=args.work))
    t0 = time.perf_counter()

    from benchmark.config import resolve_device

    device = resolve_device("auto")
    if not args.dry_run and device != "cuda":
        _say("no CUDA device: the full-size check on a CPU takes hours; use --dry-run")
        return 2
    if args.pack_precision == "amp" and device != "cuda":
        ap.error("--pack-precision amp needs CUDA")
    pack = args.pack_precision if args.pack_precision != "auto" else \
        "amp" if device == "cuda" else "fp32"
    gpus = len(_nvidia_smi("name")) if device == "cuda" else 0
    levels = [("fp32", 1)] + ([("amp", 1)] if device == "cuda" else [])
    levels += [(pack, k) for k in plan["levels"] if k > 1]
    env = dict(os.environ, PYTHONUNBUFFERED="1", LUNGBENCH_GPU_SLOTS=str(work / "slots"))
    doc: dict[str, Any] = {
        "schema": 2, "dry_run": args.dry_run,
        "command": " ".join(["perf/gpu_check.sh", *(sys.argv[1:] if argv is None else argv)]),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plan": plan, "levels": [], "skipped": []}
    ok: dict = {}  # the first ok result.json: settings and versions
    try:
        _say(f"device {device}; phantom {plan['size']} px; sweeps {levels}; work dir {work}")
        dataset = make_dataset(work, plan["size"], plan["cases"], plan["slices"])
        last = None  # wall of the last sweep in the packing precision: what the next one needs
        for prec, k in levels:
            lv: dict[str, Any] = {"precision": prec, "k": k, "slots": k * max(1, gpus)}
            doc["levels"].append(lv)
            left = plan["budget_s"] - (time.perf_counter() - t0)
            if left <= 0 or (k > 1 and last and left < last):
                lv["skipped"] = f"time budget ({max(0, left):.0f} s left, ~{last or 0:.0f} s needed)"
                doc["skipped"].append(f"{prec} k={k}")
                continue
            sweep_dir = work / "sweeps" / f"{prec}_k{k}"
            cmd = sweep_command(k, prec, iters=plan["iters"], solver=plan["solver"],
                                weights=args.weights, backbones=plan["backbones"],
                                dataset=dataset, sweep_dir=sweep_dir, device=device,
                                overrides=overrides)
            _say(f"{prec} k={k}: " + " ".join(cmd[2:]))
            log = work / f"{prec}_k{k}.log"
            lv.update(run_level(cmd, sweep_dir, log, left, env))
            if lv["rc"]:
                print(log.read_text()[-2000:], flush=True)  # the sweep's own words
            results = lv.pop("results")
            ok = ok or next((r for r in results if r.get("status") == "ok"), {})
            lv["runs"] = [run_facts(r) for r in results]
            if lv["cut_short"]:
                doc["skipped"].append(f"{prec} k={k} cut short")
            last = lv["wall_s"] if prec == pack else last
            _say(f"{prec} k={k}: {sum(r['ok'] for r in lv['runs'])}/{len(lv['runs'])} runs ok "
                 f"in {lv['wall_s']:.0f} s")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    ims = (ok.get("solver") or {}).get("ims_per_batch") or 2
    doc["env"] = {**{k: (ok.get("env") or {}).get(k) for k in ("torch", "detectron2", "python", "gpu")},
                  "device": device, "cpu_count": os.cpu_count(), "gpus": gpus}
    doc["settings"] = {"image_size": plan["size"], "solver": plan["solver"], "weights": args.weights,
                       "iters": plan["iters"], "overrides": overrides, "ims_per_batch": ims,
                       "input_size": ((ok.get("config") or {}).get("solver") or {}).get("input_size"),
                       "infer_batch": (ok.get("timing") or {}).get("infer_batch_size"),
                       **{f"n_{p}_images": (ok.get("dataset") or {}).get(f"n_{p}_images")
                          for p in ("train", "test")}}
    zoo = load_zoo()
    doc["zoo"] = {k: zoo[k] for k in ("source", "gpu", "gpus", "images_per_iter")}
    doc["backbones"] = backbone_rows(doc["levels"], plan["backbones"], zoo, ims,
                                     None if device == "cuda" else "n/a: AMP needs CUDA")
    doc["summary"] = summarise(doc["levels"], args.sweep_iters, args.test_images, pack)
    doc["wall_s"] = time.perf_counter() - t0
    md = render(doc)
    from reports.atomic import write_text

    write_text(out / "gpu_check.json", json.dumps(doc, indent=1, default=str))
    write_text(out / "gpu_check.md", md)
    print(md)
    _say(f"wrote {out / 'gpu_check.md'} and gpu_check.json in {doc['wall_s']:.0f} s")
    bad = [f"{lv['precision']} k={lv['k']}" for lv in doc["levels"]
           if lv.get("cut_short") or lv.get("error") or any(not r["ok"] for r in lv.get("runs", []))]
    if bad:
        _say("FAILED: " + ", ".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
