"""The GPU check's arithmetic and its table: pure functions, no torch, no detectron2.

``perf/gpu_check.py`` measures; this module turns the measurements into the figures the GPU check
asks for and renders them:

* ``zoo_figures``: detectron2's model-zoo row for a backbone, scaled to our images per GPU.
  The zoo trained on 8 V100s at 16 images per iteration, i.e. 2 images per GPU per
  iteration; time per iteration grows about linearly with the images each GPU processes,
  so the zoo's s/iter is multiplied by ``ims_per_batch / 2`` (1.0 at the paper's
  IMS_PER_BATCH 2: the figures compare directly). Inference is batch 1 in both. The zoo's
  memory is per GPU at 2 images per GPU and is shown as it is.
* ``slowdown``: how much slower a run trains when k runs share the GPU (per run: s/iter when
  packed over s/iter alone, same backbone and precision), averaged over the k runs.
* ``run_seconds`` / ``makespan``: one run's wall time and a sweep's wall time on k slots
  (jobs start in sweep order whenever a slot frees, as joblib's launcher hands them out).
* ``extrapolate``: the grid9 sweep (nine backbones x ``iters`` iterations) one after
  another against packed k at once; ``render_markdown``: the report.

Units: seconds, MiB (2**20 bytes), iterations; ``None`` where a figure was not measured.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Sequence

ZOO_JSON = Path(__file__).with_name("zoo.json")
TARGET_MIN = 45.0  # the goal: grid9 on one large GPU in under 45 minutes
GRID9 = ["r50_c4", "r50_dc5", "r50_fpn", "r101_c4", "r101_dc5", "r101_fpn",
         "x101_c4", "x101_dc5", "x101_fpn"]


def display_name(key: str) -> str:
    """conf/backbone file name -> the backbone's name: r50_c4 -> R50-C4."""
    return key.upper().replace("_", "-")


def load_zoo(path: str | Path = ZOO_JSON) -> dict:
    """perf/zoo.json (the speed columns of detectron2's published model-zoo table)."""
    return json.loads(Path(path).read_text())


def zoo_figures(zoo: dict, backbone: str, ims_per_batch: int) -> dict | None:
    """The zoo's figures for ``backbone`` (e.g. "R50-FPN"), scaled to ``ims_per_batch`` images
    per GPU per iteration; the 3x row where there is one (speed hardly differs from 1x).
    None for cells not in the zoo (X101-C4, X101-DC5)."""
    rows = [c for c in zoo["configs"] if c["backbone"] == backbone]
    if not rows:
        return None
    row = next((c for c in rows if c["schedule"] == "3x"), rows[0])
    per_gpu = zoo["images_per_iter"] / zoo["gpus"]
    scale = ims_per_batch / per_gpu
    return {"schedule": row["schedule"], "config": row["config"], "scale": scale,
            "train_s_per_iter": row["train_s_per_iter"] * scale,
            "infer_s_per_image": row["inference_s_per_image"],
            "train_mem_mb": row["train_mem_gb"] * 1024.0}


def median(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return statistics.median(xs) if xs else None


def slowdown(packed: Sequence[dict], alone: dict[str, float]) -> float | None:
    """Mean over the packed runs of (their s/iter) / (their backbone's s/iter alone).

    ``packed``: [{"backbone": key, "s_per_iter": float | None}, ...]; ``alone``: key -> s/iter.
    Runs without a figure (failed) or without an alone figure are left out; None if none is left."""
    ratios = [p["s_per_iter"] / alone[p["backbone"]] for p in packed
              if p.get("s_per_iter") and alone.get(p["backbone"])]
    return sum(ratios) / len(ratios) if ratios else None


def run_seconds(s_per_iter: float, iters: int, setup_s: float, infer_s_per_image: float | None,
                test_images: int, factor: float = 1.0) -> float:
    """Wall time of one run: setup (imports, model, data, first iteration) + ``iters``
    iterations + inference over ``test_images``, the last two slowed by ``factor`` (packing)."""
    infer = (infer_s_per_image or 0.0) * test_images
    return setup_s + factor * (iters * s_per_iter + infer)


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


CONTEXT_MB = 500.0  # a CUDA context per process, outside torch's allocator (approximate)


def run_peak_mb(b: dict, precision: str) -> float | None:
    """What one run of backbone ``b`` holds at its peak: its training peak reserved (else
    allocated) MiB at ``precision``, or its batched inference's (fp32) where that is higher."""
    m = b.get(precision) or {}
    figures = [m.get("reserved_mb") or m.get("peak_mb"),
               b.get("infer_reserved_mb") or b.get("infer_peak_mb")]
    figures = [x for x in figures if x]
    return max(figures) if figures else None


def worst_case_mb(backbones: Sequence[dict], precision: str, k: int,
                  context_mb: float = CONTEXT_MB) -> float | None:
    """Memory the k hungriest backbones need at once: each one's run_peak_mb plus
    ``context_mb`` (a CUDA context) each. None if no figure."""
    mbs = sorted((run_peak_mb(b, precision) for b in backbones), key=lambda x: -(x or 0))
    mbs = [m for m in mbs if m]
    if not mbs:
        return None
    return sum(mbs[:k]) + context_mb * min(k, len(mbs))


def extrapolate(backbones: Sequence[dict], packing: Sequence[dict], *, iters: int,
                test_images: int, pack_precision: str, device_mb: float | None = None) -> dict:
    """The sweep over ``backbones`` (each: key, fp32/amp {s_per_iter}, setup_s,
    infer_s_per_image and/or infer_batched_s_per_image, see infer_s) at ``iters`` iterations
    per run: one after another in fp32 and in
    AMP, and packed k at once for each measured packing level (precision
    ``pack_precision``, each run slowed by that level's measured slowdown). Backbones without
    a figure for a precision are left out of that line, and ``n`` says how many remain.
    ``device_mb``: the GPU's memory; a packing whose k hungriest backbones would not fit in
    it is not chosen as the best."""

    def durations(precision: str, factor: float = 1.0) -> list[float]:
        out = []
        for b in backbones:
            m = b.get(precision) or {}
            if m.get("s_per_iter"):
                out.append(run_seconds(m["s_per_iter"], iters, b.get("setup_s") or 0.0,
                                       infer_s(b), test_images, factor))
        return out

    res: dict[str, Any] = {"iters_per_run": iters, "test_images": test_images,
                           "pack_precision": pack_precision, "sequential": {}, "packed": {}}
    for prec in ("fp32", "amp"):
        d = durations(prec)
        res["sequential"][prec] = {"n": len(d), "wall_min": sum(d) / 60 if d else None}
    for level in packing:
        f = level.get("slowdown")
        if not f or level.get("failed"):
            continue
        d = durations(pack_precision, f)
        k = int(level["k"])
        worst = worst_case_mb(backbones, pack_precision, k, CONTEXT_MB if device_mb else 0.0)
        res["packed"][str(k)] = {"n": len(d), "slowdown": f,
                                 "wall_min": makespan(d, k) / 60 if d else None,
                                 "runs_per_hour": runs_per_hour(d, k),
                                 "worst_case_mb": worst,
                                 "fits": None if worst is None or not device_mb else worst <= device_mb}
    ok = {k: v for k, v in res["packed"].items() if v["wall_min"] and v["fits"] is not False}
    best = min(ok, key=lambda k: ok[k]["wall_min"]) if ok else None
    res["best_k"] = int(best) if best else None
    res["best_wall_min"] = ok[best]["wall_min"] if best else None
    seq = res["sequential"]["fp32"]["wall_min"]
    res["speedup_vs_sequential_fp32"] = (seq / res["best_wall_min"]) if seq and best else None
    res["target_min"] = TARGET_MIN
    res["meets_target"] = (res["best_wall_min"] < TARGET_MIN) if best else None
    return res


def runs_per_hour(durations: Sequence[float], k: int) -> float | None:
    """Steady-state throughput: k slots each finishing runs of the mean duration."""
    if not durations:
        return None
    return 3600.0 * k / (sum(durations) / len(durations))


# --------------------------------------------------------------------------- rendering


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"
    return str(x)


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _infer_mem(b: dict) -> str:
    mb = b.get("infer_peak_mb")
    oom = f", {b['infer_oom_batches']} OOM" if b.get("infer_oom_batches") else ""
    return f" ({_mb(mb)} MiB{oom})" if mb else ""


def _batch_desc(doc: dict) -> str:
    sizes = sorted({b["infer_batch"] for b in doc["backbones"] if b.get("infer_batch")})
    return "/".join(map(str, sizes)) or "-"


def infer_s(b: dict) -> float | None:
    """Inference s/image as a sweep run pays it: batched where measured, else one at a time."""
    return b.get("infer_batched_s_per_image") or b.get("infer_s_per_image")


def render_markdown(doc: dict) -> str:
    """The report: settings, the per-backbone table, the packing table, the extrapolation."""
    s, env = doc["settings"], doc["env"]
    gpu = env["device"] == "cuda"
    mem = "peak GPU MiB" if gpu else "peak RSS MiB"
    lines = [
        f"# GPU check{' (dry run)' if doc['dry_run'] else ''}",
        "",
        f"{doc['measured_at']} on {env.get('gpu') or 'CPU'} ({env['device']}, torch {env['torch']}, "
        f"detectron2 {env['detectron2']}, Python {env['python']}, {env['cpu_count']} CPU cores); "
        f"`{doc['command']}` in {doc['wall_s']:.0f} s.",
        "",
        f"Phantom {s['image_size']}x{s['image_size']} ({s['n_train_images']} train / "
        f"{s['n_test_images']} test slices); solver `{s['solver']}` (IMS_PER_BATCH "
        f"{s['ims_per_batch']}, input {s['input_desc']}, RoIs/image {s['roi_per_image']}); "
        f"{s['weights_desc']}; DataLoader workers {s['num_workers']}. Train s/iter: median of "
        f"{s['iters']} iterations (at most {s['window_s']:g} s) after {s['warmup']} warm-up ones, "
        f"each synchronised{' (torch.cuda.synchronize)' if gpu else ''}"
        f"{'; cudnn.benchmark ' + ('on' if env.get('cudnn_benchmark') else 'off') + ', TF32 convolutions ' + ('on' if env.get('tf32_conv') else 'off') if gpu else ''}; inference: median "
        f"s/image at batch 1 (fp32), first image left out; batched: s/image at "
        f"{_batch_desc(doc)} images per pass (second pass; in brackets its peak memory, which "
        "packing must leave room for), what the sweep's `infer_batch_size=auto` does on CUDA "
        "and what the extrapolation uses.",
        "",
        f"Zoo: detectron2 MODEL_ZOO ({doc['zoo']['gpus']}x {doc['zoo']['gpu']}, "
        f"{doc['zoo']['images_per_iter']} images/iter = "
        f"{doc['zoo']['images_per_iter'] // doc['zoo']['gpus']} images per GPU per iteration); "
        f"its s/iter is scaled by IMS_PER_BATCH / "
        f"{doc['zoo']['images_per_iter'] // doc['zoo']['gpus']} = "
        f"{s['ims_per_batch'] / (doc['zoo']['images_per_iter'] / doc['zoo']['gpus']):g} to our "
        "images per GPU; the zoo's inference is batch 1; its memory is per GPU at 2 images. "
        "COCO images resize to ~800x1200, the 512x512 phantom to 640-800 square: fewer pixels here.",
        "",
        f"| backbone | train s/iter fp32 | AMP | AMP speed-up | zoo s/iter | fp32 / zoo "
        f"| infer s/img | batched | zoo infer | {mem} fp32 | {mem} AMP | zoo MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in doc["backbones"]:
        fp, amp, zoo = b.get("fp32") or {}, b.get("amp") or {}, b.get("zoo") or {}
        if b.get("skipped"):
            lines.append(f"| {b['name']} | skipped: {b['skipped']} |" + " |" * 10)
            continue
        t, ta, tz = fp.get("s_per_iter"), amp.get("s_per_iter"), zoo.get("train_s_per_iter")
        lines.append(
            f"| {b['name']} | {_f(t)} | {_f(ta) if ta else (amp.get('note') or '-')} "
            f"| {_f(t / ta, 2) + 'x' if t and ta else '-'} | {_f(tz)} "
            f"| {_f(t / tz, 2) + 'x' if t and tz else '-'} | {_f(b.get('infer_s_per_image'))} "
            f"| {_f(b.get('infer_batched_s_per_image'))}{_infer_mem(b)} "
            f"| {_f(zoo.get('infer_s_per_image'))} "
            f"| {_mb(fp.get('peak_mb'))} "
            f"| {_mb(amp.get('peak_mb'))} | {_mb(zoo.get('train_mem_mb'))} |")
    for b in doc["backbones"]:
        for prec in ("fp32", "amp"):
            err = (b.get(prec) or {}).get("error")
            if err:
                lines.append(f"\n{b['name']} {prec} failed: {err}")

    p = doc["packing_settings"]
    lines += [
        "",
        f"Packing: k runs at once on the one {'GPU' if gpu else 'CPU'}, separate processes "
        f"({p['precision']}; DataLoader workers per run {p['num_workers']}, as a packed sweep "
        f"sizes them; {p['threads_desc']} torch threads each); after {p['warmup']} warm-up iterations every process waits for "
        f"the others, then all train for the same {p['window_s']:g} s window. Slowdown = mean "
        f"over the k runs of s/iter packed / s/iter alone (table above, same precision). "
        f"Runs/hour = grid runs finished per hour at that packing, from each backbone's "
        f"{doc['extrapolation']['iters_per_run']}-iteration run (+ setup, + inference on "
        f"{doc['extrapolation']['test_images']} test slices), all slowed by the slowdown.",
        "",
        f"| runs at once | backbones | median s/iter per run | slowdown | grid runs/hour "
        f"| {mem} per run (max) | {mem} all runs | GPU util % (median) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ext = doc["extrapolation"]
    for lv in doc["packing"]:
        if lv.get("skipped"):
            lines.append(f"| {lv['k']} | skipped: {lv['skipped']} |" + " |" * 6)
            continue
        runs = lv["runs"]
        pk = ext["packed"].get(str(lv["k"]), {})
        names = ", ".join(r["name"] + ("" if r.get("s_per_iter") else " (FAILED)") for r in runs)
        lines.append(
            f"| {lv['k']} | {names} | {_f(median(r['s_per_iter'] for r in runs if r.get('s_per_iter')))} "
            f"| {_f(lv.get('slowdown'), 3)} | {_f(pk.get('runs_per_hour'))} "
            f"| {_mb(max((r['peak_mb'] for r in runs if r.get('peak_mb')), default=None))} "
            f"| {_mb(lv.get('total_mb'))} | {_f(lv.get('gpu_util_median'))} |")
        for r in runs:
            if r.get("error"):
                lines.append(f"\nk={lv['k']} {r['name']} failed: {r['error']}")

    ld = doc.get("loader")
    if ld:
        cores = env["cpu_count"] or 1
        ims = s["ims_per_batch"]
        fed = {lv["k"]: sum(ims / r["s_per_iter"] for r in lv["runs"] if r.get("s_per_iter"))
               for lv in doc["packing"] if lv.get("runs")}
        want = ("; the packed runs consume " + ", ".join(f"{v:.0f} (k={k})" for k, v in fed.items())
                + " images/s") if fed else ""
        lines += ["", f"Data loading (the harness's train mapper, one core, {ld['images']} "
                  f"images): {1000 * ld['mapper_s_per_image']:.1f} ms/image, of which PNG decode "
                  f"{1000 * ld['png_decode_s_per_image']:.1f} ms and RLE mask decode "
                  f"{1000 * ld['rle_decode_s_per_image']:.1f} ms (what caching decoded slices "
                  f"would save: {100 * (ld['cacheable_share'] or 0):.0f}%); {cores} cores map at "
                  f"most ~{cores / ld['mapper_s_per_image']:.0f} images/s{want}."]

    seq = ext["sequential"]
    measured = [b["key"] for b in doc["backbones"] if not b.get("skipped")]
    missing = [k for k in GRID9 if k not in measured]
    what = ("grid9, the paper protocol" if not missing else "dry run: not the full grid"
            if doc["dry_run"] else f"NOT the full grid: {', '.join(missing)} missing")
    lines += ["", f"Sweep of the {len(measured)} backbone(s) above x {ext['iters_per_run']} "
              f"iterations ({what}), "
              "extrapolated from the timed iterations (runs start in sweep order whenever a "
              "slot frees; evaluation/metrics time not included):", ""]
    for prec in ("fp32", "amp"):
        v = seq.get(prec, {})
        lines.append(f"- one after another, {prec}: {_f(v.get('wall_min'))} min "
                     f"({v.get('n', 0)} runs)")
    for k, v in ext["packed"].items():
        fit = {True: "fits", False: "does NOT fit", None: "fit unknown"}[v.get("fits")]
        lines.append(f"- {k} at once, {ext['pack_precision']}: {_f(v['wall_min'])} min "
                     f"(slowdown {_f(v['slowdown'])}; the {k} hungriest at once need "
                     f"~{_mb(v.get('worst_case_mb'))} MiB: {fit})")
    if ext.get("best_k"):
        verdict = "meets" if ext["meets_target"] else "MISSES"
        lines.append(f"- best: {ext['best_k']} at once, {_f(ext['best_wall_min'])} min, "
                     f"{_f(ext['speedup_vs_sequential_fp32'], 2)}x faster than one after another "
                     f"in fp32; {verdict} the < {ext['target_min']:g} min target")
        amp = "" if ext["pack_precision"] == "amp" else " amp=false"
        lines.append(f"- to run it so: `make sweep ARGS='hydra/launcher=joblib "
                     f"jobs_per_gpu={ext['best_k']}{amp}'`")
    if doc.get("skipped"):
        lines += ["", "Skipped (time budget or errors): " + "; ".join(doc["skipped"])]
    return "\n".join(lines) + "\n"
