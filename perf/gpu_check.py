"""The GPU check: per-backbone speed and memory next to detectron2's zoo, and how
many runs one GPU should hold at once. Run it through ``perf/gpu_check.sh`` (which installs
what the GPU machine lacks from ``.whl/``), or directly::

    python -m perf.gpu_check [--dry-run] [--out DIR] [--budget-s S] [--backbones a,b] [--levels 1,2,4,8]

1. generates the phantom (512 x 512; dry run 64 x 64) and converts it;
2. per backbone (all nine; dry run three, incl. a C4): a trainer built by the harness trains a
   few warm-up iterations, then ``iters`` timed ones (each bounded by ``window_s``), in fp32
   and in AMP (CUDA only); inference s/image (fp32, batch 1, and 8 per pass as the sweep runs
   it on CUDA) on the test slices; peak memory;
3. packing: k = 1, 2, 4, 8 (dry run 1, 2) runs at once in separate processes
   (``perf.gpu_worker``), all timed over one common window; GPU utilisation and memory
   sampled with nvidia-smi where there is one;
4. extrapolates the sweep (nine backbones x 5000 iterations) one after another against the
   best packing, writes ``gpu_check.md`` + ``gpu_check.json`` into ``--out`` and prints the
   Markdown.

A time budget (``--budget-s``; 420 s on a GPU, under 8 minutes with set-up) is
split between the two parts; what would overrun it is skipped and listed, never cut short
silently. Exit status: 0, or 1 if any measurement failed.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from converters.fsutil import check_owned, write_marker
from reports.atomic import write_text

from perf import gpu_report as R

REPO = Path(__file__).resolve().parent.parent
# Packing mixes: the first k of this order, chosen so that every prefix mixes light and heavy
# cells (a sweep packs whatever comes next, not k copies of one model).
PACK_ORDER = ["r101_dc5", "r50_fpn", "x101_c4", "r50_c4", "x101_fpn", "r101_fpn", "r50_dc5",
              "x101_dc5", "r101_c4"]
TEST_IMAGES = 704  # ~ one fifth of the real dataset's 3520 slices: one patient fold's test part


@dataclass(frozen=True)
class Plan:
    """Sizes of one check. Seconds, pixels, iterations."""

    size: int
    n_cases: int
    slices: int
    solver: str
    backbones: list[str]
    warmup: int
    iters: int
    window_s: float
    levels: list[int]
    pack_warmup: int
    pack_window_s: float
    budget_s: float
    part1_share: float = 0.55  # of the budget, for the per-backbone part; packing gets the rest
    ready_timeout_s: float = 240.0
    num_workers: int | None = None  # None: the solver's own
    threads: int | None = None  # torch threads per process; None: torch's default (alone) and
    #                             cores // k (packed)
    extra: list[str] = field(default_factory=list)
    cudnn_benchmark: bool = False  # detectron2's default (CUDNN_BENCHMARK False)
    infer_batch: int = 8  # images per inference pass (the harness's infer_batch_size=auto on CUDA)


# On an H200: ~10 s to install wheels and import, then 420 s of measurements: the whole
# script stays under 8 minutes.
GPU_PLAN = Plan(size=512, n_cases=3, slices=10, solver="paper", backbones=list(R.GRID9),
                warmup=3, iters=12, window_s=6.0, levels=[1, 2, 4, 8], pack_warmup=3,
                pack_window_s=15.0, budget_s=420.0)
# CI: the same code path at toy sizes. Its budget is generous on purpose: a loaded CI machine
# must not skip rows (the sizes, not the budget, keep it around two minutes).
DRY_PLAN = Plan(size=64, n_cases=2, slices=5, solver="smoke", backbones=["r50_fpn", "r50_c4"],
                warmup=1, iters=3, window_s=20.0, levels=[1, 2], pack_warmup=1,
                pack_window_s=4.0, budget_s=900.0, ready_timeout_s=120.0, threads=1,
                infer_batch=4)
# (one torch thread: on a small shared CPU two OpenMP threads per process make each iteration
# up to 10x slower as soon as another process wants a core; measured here)


def _say(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Clock:
    """Seconds since the check started, against its budget."""

    def __init__(self, budget_s: float) -> None:
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self, until_share: float = 1.0) -> float:
        return self.budget_s * until_share - self.elapsed()


# --------------------------------------------------------------------------- part 1


def measure_backbones(plan: Plan, dataset: Path, work: Path, device: str, clock: Clock,
                      zoo: dict, doc: dict, save) -> None:
    """Fill doc["backbones"]: per backbone fp32 (+ inference) and AMP figures."""
    from tqdm import tqdm

    from perf import gpu_bench as G

    precisions = ["fp32", "amp"] if device == "cuda" else ["fp32"]
    spent: list[float] = []
    for key in tqdm(plan.backbones, desc="backbones", unit="backbone", file=sys.stdout,
                    mininterval=0, disable=None):
        t_b = time.perf_counter()
        entry: dict = {"key": key}
        doc["backbones"].append(entry)
        est = statistics.mean(spent) if spent else 0.0
        if clock.left(plan.part1_share) < est:
            entry.update(name=R.display_name(key), skipped=f"time budget ({clock.elapsed():.0f} s spent, "
                                           f"~{est:.0f} s needed)")
            doc["skipped"].append(f"{key}: time budget")
            save()
            continue
        for prec in ("fp32", "amp"):
            if prec not in precisions:
                entry[prec] = {"note": "n/a: AMP needs CUDA"}
                continue
            try:
                d2, train, test, cfg = G.build_cfg(
                    dataset, key, plan.solver, amp=prec == "amp", device=device,
                    out_dir=work / "runs" / f"{key}_{prec}",
                    max_iter=plan.warmup + plan.iters + 1, num_workers=plan.num_workers,
                    extra=tuple(plan.extra))
                entry.update(name=str(cfg.backbone.name), in_zoo=bool(cfg.backbone.in_zoo),
                             zoo=R.zoo_figures(zoo, str(cfg.backbone.name),
                                               int(cfg.solver.ims_per_batch)))
                m = G.train_slice(d2, warmup=plan.warmup, iters=plan.iters,
                                  window_s=plan.window_s,
                                  infer_test=test.name if prec == "fp32" else None,
                                  infer_batch=plan.infer_batch)
                infer = {k: m.pop(k) for k in list(m) if k.startswith("infer_")}
                if prec == "fp32":
                    entry.update(infer, infer_batch=plan.infer_batch)
                    entry["setup_s"] = m["setup_s"]
                entry[prec] = m
                _say(f"{key} {prec}: {m['s_per_iter']:.4f} s/iter over {m['iters_timed']} "
                     f"iterations, peak {m['peak_mb']:.0f} MiB")
            except Exception as e:  # noqa: BLE001 - an OOM or a crash is a figure too
                entry.setdefault("name", R.display_name(key))
                entry[prec] = {"error": f"{type(e).__name__}: {e}"[:400],
                               "traceback": traceback.format_exc()[-3000:]}
                _say(f"{key} {prec}: FAILED {type(e).__name__}: {e}")
        spent.append(time.perf_counter() - t_b)
        save()


# --------------------------------------------------------------------------- part 2


def _gpu_sample() -> tuple[float, float] | None:
    """(utilisation %, memory used MiB) of GPU 0 from nvidia-smi, or None."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=utilization.gpu,memory.used",
                              "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=5).stdout
        util, used = (float(x) for x in out.strip().splitlines()[0].split(","))
        return util, used
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def pack_workers(plan: Plan, k: int, cores: int | None = None) -> int:
    """DataLoader workers of each of k packed runs: ``--workers`` if given, else what a packed
    sweep gives each run (the solver's count; ``auto``: benchmark.config.auto_workers, the
    cores each of the k runs gets, as the joblib launcher sizes them)."""
    from omegaconf import OmegaConf

    from benchmark.config import auto_workers

    if plan.num_workers is not None:
        return plan.num_workers
    own = OmegaConf.load(REPO / "conf" / "solver" / f"{plan.solver}.yaml").num_workers
    return auto_workers(cores or os.cpu_count() or 1, k) if own == "auto" else int(own)


def pack_level(k: int, mix: list[dict], plan: Plan, dataset: Path, work: Path, device: str,
               precision: str, hard_end: float) -> dict:
    """k processes (``mix``: [{key, name}]) trained over one common window. Returns the
    level's record: runs (each worker's figures or error), gpu samples, wall_s.
    ``hard_end`` (time.time()): the window ends before it, and workers still running 30 s
    after it are killed (their figures are then missing, and say so)."""
    t0 = time.perf_counter()
    d = work / f"pack{k}"
    check_owned(d, "gpu-check", "the GPU check's work folder")  # never a folder of the user's
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    write_marker(d, "gpu-check")
    threads = plan.threads or max(1, (os.cpu_count() or 1) // k)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in
                                           os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    procs = []
    for i, m in enumerate(mix):
        spec = {"name": m["name"], "backbone": m["key"], "index": i, "dataset": str(dataset),
                "solver": plan.solver, "amp": precision == "amp", "device": device,
                "sync_dir": str(d), "out_json": str(d / f"result_{i}.json"),
                "warmup": plan.pack_warmup, "window_s": plan.pack_window_s,
                "ready_timeout_s": plan.ready_timeout_s, "threads": threads,
                "num_workers": pack_workers(plan, k), "cudnn_benchmark": plan.cudnn_benchmark,
                "spawned_at": time.time()}
        (d / f"spec_{i}.json").write_text(json.dumps(spec))
        log = open(d / f"log_{i}.txt", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "perf.gpu_worker", "--spec",
                                        str(d / f"spec_{i}.json")], cwd=REPO, env=env,
                                       stdout=log, stderr=subprocess.STDOUT), log))
    # every live worker warm (or dead) -> one common window
    end = min(time.time() + plan.ready_timeout_s, hard_end - plan.pack_window_s - 5.0)
    while time.time() < end:
        if all((d / f"ready_{i}").exists() or p.poll() is not None
               for i, (p, _) in enumerate(procs)):
            break
        time.sleep(0.1)
    deadline = time.time() + 0.5 + plan.pack_window_s
    write_text(d / "go", json.dumps({"deadline": deadline}))
    samples = []
    while time.time() < deadline:
        s = _gpu_sample()
        if s is not None and time.time() > deadline - plan.pack_window_s:
            samples.append(s)
        time.sleep(0.5)
    grace = max(time.time() + 10.0, min(time.time() + 120.0, hard_end + 30.0))
    for p, log in procs:
        try:
            p.wait(timeout=max(1.0, grace - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()  # our own child, stuck: its figures are missing
            p.wait()
        log.close()
    runs = []
    for i, m in enumerate(mix):
        f = d / f"result_{i}.json"
        if f.is_file():
            r = json.loads(f.read_text())
        else:
            tail = (d / f"log_{i}.txt").read_text()[-400:]
            r = {"name": m["name"], "backbone": m["key"], "error": f"no result (killed?): {tail}"}
        runs.append(r)
    return {"k": k, "runs": runs, "precision": precision, "threads": threads,
            "num_workers": pack_workers(plan, k),
            "gpu_util_median": R.median(u for u, _ in samples),
            "gpu_mem_used_max_mb": max((m for _, m in samples), default=None),
            "wall_s": time.perf_counter() - t0}


def measure_packing(plan: Plan, dataset: Path, work: Path, device: str, clock: Clock,
                    doc: dict, save, precision: str) -> None:
    ok = {b["key"]: b for b in doc["backbones"] if (b.get(precision) or {}).get("s_per_iter")}
    order = [b for b in PACK_ORDER if b in ok] + [b for b in ok if b not in PACK_ORDER]
    alone = {b: ok[b][precision]["s_per_iter"] for b in ok}
    last_wall = None
    for k in plan.levels:
        if not order:
            doc["packing"].append({"k": k, "skipped": f"no backbone has a {precision} figure"})
            continue
        est = 1.3 * last_wall if last_wall else plan.pack_window_s + 30.0
        if clock.left() < est:
            doc["packing"].append({"k": k, "skipped": f"time budget ({clock.elapsed():.0f} s "
                                                      f"spent, ~{est:.0f} s needed)"})
            doc["skipped"].append(f"packing k={k}: time budget")
            save()
            continue
        mix = [{"key": order[i % len(order)], "name": ok[order[i % len(order)]]["name"]}
               for i in range(k)]
        _say(f"packing k={k}: {', '.join(m['name'] for m in mix)}")
        lv = pack_level(k, mix, plan, dataset, work, device, precision,
                        hard_end=time.time() + clock.left())
        lv["slowdown"] = R.slowdown(lv["runs"], alone)
        lv["failed"] = any(r.get("error") for r in lv["runs"])
        peaks = [r.get("reserved_mb") or r.get("peak_mb") for r in lv["runs"]]
        lv["total_mb"] = lv["gpu_mem_used_max_mb"] or (sum(peaks) if all(peaks) else None)
        last_wall = lv["wall_s"]
        doc["packing"].append(lv)
        sd = f"{lv['slowdown']:.2f}" if lv["slowdown"] else "-"
        _say(f"packing k={k}: slowdown {sd} in {lv['wall_s']:.0f} s"
             + (" (a run FAILED)" if lv["failed"] else ""))
        save()


# --------------------------------------------------------------------------- main


def _solver_facts(plan: Plan, dataset: Path, device: str) -> dict:
    from perf import gpu_bench as G

    d2, train, test, cfg = G.build_cfg(dataset, plan.backbones[0], plan.solver, amp=False,
                                       device=device, out_dir=Path(tempfile.gettempdir()),
                                       max_iter=1, num_workers=plan.num_workers,
                                       extra=tuple(plan.extra))
    s = cfg.solver
    if s.input_size == "zoo":
        desc = (f"zoo resize: short side {list(d2.INPUT.MIN_SIZE_TRAIN)} train / "
                f"{d2.INPUT.MIN_SIZE_TEST} test")
    else:
        desc = f"{s.input_size} ({d2.INPUT.MIN_SIZE_TEST} px)"
    return {"solver": str(s.name), "ims_per_batch": int(s.ims_per_batch), "input_desc": desc,
            "roi_per_image": int(d2.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE),
            "num_workers": int(d2.DATALOADER.NUM_WORKERS),
            "n_train_images": train.n_images, "n_test_images": test.n_images,
            "weights_desc": "zoo model layout (FrozenBN, FREEZE_AT 2), random init with its "
                            "frozen-BN statistics set from one batch (no checkpoint travels)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny CPU-sized check (CI)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where gpu_check.md/.json go (default perf/gpu; dry run work/gpu_check_dry)")
    ap.add_argument("--budget-s", type=float, default=None, help="time budget of the whole check")
    ap.add_argument("--backbones", default=None, help="comma list (default: the plan's)")
    ap.add_argument("--levels", default=None, help="packing levels, e.g. 1,2,4,8")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--size", type=int, default=None, help="phantom slice size in pixels")
    ap.add_argument("--solver", default=None, help="conf/solver: paper | smoke (default: the plan's)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: solver's)")
    ap.add_argument("--pack-precision", default="auto", choices=["auto", "fp32", "amp"],
                    help="precision of the packed runs (auto: amp on CUDA, else fp32)")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="torch.backends.cudnn.benchmark on, in every process (default off, "
                         "as detectron2)")
    ap.add_argument("--sweep-iters", type=int, default=5000)
    ap.add_argument("--test-images", type=int, default=TEST_IMAGES)
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp dir)")
    args = ap.parse_args(argv)

    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    if args.backbones:
        bad = set(args.backbones.split(",")) - set(R.GRID9)
        if bad:
            ap.error(f"unknown backbone(s) {sorted(bad)}; choose from {R.GRID9}")
        plan = replace(plan, backbones=args.backbones.split(","))
    if args.levels:
        plan = replace(plan, levels=[int(x) for x in args.levels.split(",")])
    if args.budget_s:
        plan = replace(plan, budget_s=args.budget_s)
    if args.workers is not None:
        plan = replace(plan, num_workers=args.workers)
    if args.size:
        plan = replace(plan, size=args.size)
    if args.solver:
        plan = replace(plan, solver=args.solver)
    if args.cudnn_benchmark:
        plan = replace(plan, cudnn_benchmark=True)
    out = args.out or (REPO / ("work/gpu_check_dry" if args.dry_run else "perf/gpu"))
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(plan.budget_s)
    # a hang (a stuck DataLoader worker, a wedged CUDA call) must not eat the time budget silently:
    # print every thread's stack and exit well before the device tool's own limit
    faulthandler.dump_traceback_later(plan.budget_s + 90, exit=True)

    from perf import gpu_bench as G

    G.quiet_detectron2()
    from benchmark.config import resolve_device

    import torch

    torch.backends.cudnn.benchmark = plan.cudnn_benchmark
    if plan.threads:
        torch.set_num_threads(plan.threads)

    device = resolve_device(args.device)
    if not args.dry_run and device != "cuda":
        _say("no CUDA device: the full-size check on a CPU takes hours; use --dry-run")
        return 2
    if args.pack_precision == "amp" and device != "cuda":
        ap.error("--pack-precision amp needs CUDA")
    work = args.work or Path(tempfile.mkdtemp(prefix="lungbench-gpu-check-"))
    zoo = R.load_zoo()
    doc = {"schema": 1, "dry_run": args.dry_run, "command": " ".join(["perf/gpu_check.sh"] + (argv if argv is not None else sys.argv[1:])),
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "env": {"device": device}, "plan": asdict(plan), "settings": {},
           "zoo": {k: zoo[k] for k in ("source", "gpu", "gpus", "images_per_iter")},
           "backbones": [], "packing": [], "skipped": [], "wall_s": 0.0}

    def save() -> None:
        doc["wall_s"] = clock.elapsed()
        write_text(out / "gpu_check.json", json.dumps(doc, indent=1, default=str))

    try:
        _say(f"device {device}; phantom {plan.size}x{plan.size}, {plan.n_cases} cases; "
             f"budget {plan.budget_s:.0f} s; work dir {work}")
        dataset = G.make_dataset(work, plan.size, plan.n_cases, plan.slices,
                                 workers=min(plan.n_cases, os.cpu_count() or 1))
        # after the converter's process pool: its forked workers never meet a CUDA context
        doc["env"] = G.env_facts(device)
        doc["settings"] = {"image_size": plan.size, "warmup": plan.warmup, "iters": plan.iters,
                           "window_s": plan.window_s, **_solver_facts(plan, dataset, device)}
        doc["packing_settings"] = {
            "precision": None, "warmup": plan.pack_warmup, "window_s": plan.pack_window_s,
            "num_workers": ", ".join(f"{pack_workers(plan, k)} (k={k})" for k in plan.levels),
            "threads_desc": str(plan.threads) if plan.threads else f"{os.cpu_count()} cores / k"}
        _say(f"dataset ready in {clock.elapsed():.0f} s: {dataset}")
        d2, train, _, _ = G.build_cfg(dataset, plan.backbones[0], plan.solver, amp=False,
                                      device=device, out_dir=work / "loader", max_iter=1,
                                      num_workers=plan.num_workers, extra=tuple(plan.extra))
        doc["loader"] = G.loader_profile(d2, train.name)
        _say(f"loader: {1000 * doc['loader']['mapper_s_per_image']:.1f} ms/image on one core")
        measure_backbones(plan, dataset, work, device, clock, zoo, doc, save)
        # packed runs use AMP on CUDA (the proposed default), unless AMP failed everywhere
        precision = args.pack_precision
        if precision == "auto":
            has_amp = any((b.get("amp") or {}).get("s_per_iter") for b in doc["backbones"])
            precision = "amp" if has_amp else "fp32"
        doc["packing_settings"]["precision"] = precision
        measure_packing(plan, dataset, work, device, clock, doc, save, precision)
        import_s = R.median(r["import_s"] for lv in doc["packing"] for r in lv.get("runs", [])
                            if r.get("import_s"))
        sweep = [dict(b, setup_s=(b.get("setup_s") or 0.0) + (import_s or 0.0))
                 for b in doc["backbones"] if not b.get("skipped")]
        doc["extrapolation"] = R.extrapolate(sweep, doc["packing"], iters=args.sweep_iters,
                                             test_images=args.test_images,
                                             pack_precision=precision,
                                             device_mb=doc["env"].get("gpu_total_mb"))
        doc["extrapolation"]["import_s"] = import_s
    finally:
        save()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    md = R.render_markdown(doc)
    write_text(out / "gpu_check.md", md)
    print(md)
    _say(f"wrote {out / 'gpu_check.md'} and gpu_check.json in {clock.elapsed():.0f} s")
    failed = [f"{b['key']} {p}" for b in doc["backbones"] for p in ("fp32", "amp")
              if (b.get(p) or {}).get("error")]
    failed += [f"packing k={lv['k']}" for lv in doc["packing"] if lv.get("failed")]
    if failed:
        _say("FAILED: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
