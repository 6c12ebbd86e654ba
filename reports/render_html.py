"""report.html: one self-contained page (CSS inline, PNGs as base64 data URIs, no script),
readable at a glance: warnings, the winner per class, Table 3 beside the paper, failures,
the plots, then the details (per-class table, settings, environment, every run)."""

from __future__ import annotations

import base64
import datetime
import json
from html import escape
from typing import Any, Iterable

import pandas as pd

from contracts.catalog import CLASS_COLOURS, CLASS_LABELS, CLASS_NAMES

from . import tables
from .groups import Groups, group_label, ok_rows
from .plots import Plot
from .stats import MIN_CASES, SELECTION, TIED_ZERO
from .tables import SEGM_AP, class_col, fmt, fmt_pm, load_paper, mean_std, table3_display
from .volume3d import VIEWS, wide

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'DejaVu Sans',Arial,sans-serif;margin:0;color:#1d232a;background:#f4f6f8}
main{max-width:1280px;margin:0 auto;padding:18px 26px 60px;background:#fff}
h1{font-size:26px;margin:6px 0 2px} h2{font-size:20px;margin:30px 0 8px;border-bottom:2px solid #e3e7eb;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 4px}
.sub{color:#5b6670;font-size:13px}
.banner{border-radius:6px;padding:12px 16px;margin:12px 0;font-size:15px}
.smoke{background:#fff1e6;border:2px solid #e8590c;color:#7a2e00;font-size:17px;font-weight:600}
.notes{background:#fff9db;border:1px solid #f0c36d}
.bad{background:#fff0f0;border:1px solid #e5a0a0}
.summary{display:flex;gap:10px;flex-wrap:wrap;margin:10px 0}
.pill{padding:6px 12px;border-radius:14px;background:#eef2f6;font-size:14px}
.pill.ok{background:#e6f4ea;color:#1e6b34} .pill.fail{background:#fde8e8;color:#9b1c1c} .pill.miss{background:#f1f1f1;color:#555}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{flex:1 1 220px;border:1px solid #dde3e8;border-radius:8px;padding:10px 14px;border-top:5px solid var(--c)}
.card .what{font-size:13px;color:#5b6670;text-transform:uppercase;letter-spacing:.04em}
.card .who{font-size:21px;font-weight:700;margin:3px 0}
.card .val{font-size:14px} .card .more{font-size:12px;color:#5b6670;margin-top:3px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 4px}
th,td{border:1px solid #d5dbe0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef2f6}
th.grp{text-align:center;background:#e2e8ee}
#per-class td,#per-class th{font-size:12.5px;padding:3px 6px}
td:first-child{white-space:nowrap}
tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{font-weight:700;background:#e6f4ea!important}
tr.missing td{color:#888;font-style:italic} tr.paper td{color:#666} tr.failed td{background:#fff0f0!important}
.pos{color:#1e6b34} .neg{color:#9b1c1c}
figure{margin:10px 0 22px} figure img{max-width:100%;border:1px solid #e3e7eb}
figcaption{font-size:13px;color:#5b6670;margin-top:4px}
.skip{color:#8a5a00;font-size:13px;background:#fff9db;padding:6px 10px;border-radius:4px}
ul{margin:4px 0 4px 20px;padding:0} li{margin:2px 0;font-size:14px}
details{margin:8px 0} summary{cursor:pointer;font-weight:600}
.wide{overflow-x:auto}
code{background:#eef2f6;padding:1px 4px;border-radius:3px;font-size:12.5px}
"""

_CLASS_CSS = {**{CLASS_LABELS[c]: CLASS_COLOURS[c] for c in CLASS_NAMES}, "mean of 3 classes": "#6c757d"}


def _table(df: pd.DataFrame, *, table_id: str | None = None, num_cols: Iterable[str] = (),
           row_class: list[str] | None = None, best: dict[str, int] | None = None,
           header_groups: list[tuple[str, int]] | None = None, labels: dict[str, str] | None = None) -> str:
    """An HTML table of strings; ``best`` marks one row index per column in bold green;
    ``header_groups`` adds a first header row of (label, column span); ``labels`` renames headers."""
    num_cols, best, labels = set(num_cols), best or {}, labels or {}
    head = "".join(f"<th>{escape(str(labels.get(c, c)))}</th>" for c in df.columns)
    if header_groups:
        top = "".join(f"<th colspan='{n}' class='grp'>{escape(g)}</th>" for g, n in header_groups)
        head = f"{top}</tr><tr>{head}"
    body = []
    for i, row in enumerate(df.itertuples(index=False, name=None)):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        tds = []
        for c, v in zip(df.columns, row):
            k = (["num"] if c in num_cols else []) + (["best"] if best.get(c) == i else [])
            text = escape(str(v))
            if c.startswith("Δ") and text not in ("-", ""):
                text = f'<span class="{"pos" if not text.startswith("-") else "neg"}">{text}</span>'
            tds.append(f'<td class="{" ".join(k)}">{text}</td>' if k else f"<td>{text}</td>")
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    tid = f' id="{table_id}"' if table_id else ""
    return f'<div class="wide"><table{tid}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _distinct(df: pd.DataFrame, col: str) -> str:
    if col not in df.columns:
        return "-"
    vals = df[col].map(lambda v: "-" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    counts = vals.value_counts()
    if len(counts) == 1:
        return counts.index[0]
    return ", ".join(f"{v} ({n} runs)" for v, n in counts.items())


SETTINGS = [
    ("experiment", "experiment"), ("solver", "solver.name"), ("images / iteration", "solver.ims_per_batch"),
    ("base LR", "solver.base_lr"), ("max iterations", "solver.max_iter"), ("LR schedule", "solver.lr_schedule"),
    ("AMP", "solver.amp"), ("weights", "weights"), ("schedule", "schedule"), ("dataset", "dataset.name"),
    ("dataset dir", "dataset.dir"), ("split", "dataset.split"), ("folds", "dataset.fold"), ("seeds", "seed"),
    ("train images", "dataset.n_train_images"), ("test images", "dataset.n_test_images"),
    ("image size", "dataset.image_size"),
]
ENV = [("device", "env.device"), ("torch", "env.torch"), ("detectron2", "env.detectron2"),
       ("python", "env.python"), ("git sha", "env.git_sha"), ("host", "env.hostname"),
       ("schema", "schema"), ("started", "started_at"), ("finished", "finished_at")]


def _kv_table(df: pd.DataFrame, items: list[tuple[str, str]]) -> str:
    rows = []
    for label, col in items:
        if col in ("started_at", "finished_at") and col in df.columns:
            v = [str(x) for x in df[col] if isinstance(x, str)]
            val = (min(v) if col == "started_at" else max(v)) if v else "-"
            label = "first start" if col == "started_at" else "last finish"
        else:
            val = _distinct(df, col)
        rows.append({"setting": label, "value": val})
    return _table(pd.DataFrame(rows))


def _per_class_wide(groups: Groups) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per backbone group: segm AP, bbox AP and Dice per class (mean ± std over runs)."""
    rows, raw = [], []
    cols = ([(f"segm AP {CLASS_LABELS[c]}", class_col(c)) for c in CLASS_NAMES]
            + [(f"bbox AP {CLASS_LABELS[c]}", class_col(c, "bbox")) for c in CLASS_NAMES]
            + [(f"Dice {CLASS_LABELS[c]}", f"metrics.dice.mean.{c}") for c in CLASS_NAMES]
            + [("burden abs err (pp)", "metrics.infection_burden_abs_error.mean")])
    for k, g in groups:
        row, rv = {"backbone": group_label(k)}, {}
        for name, col in cols:
            m, s, n = mean_std(g, col)
            digits = 3 if name.startswith("Dice") else 1
            row[name] = "-" if not n else (f"{m:.{digits}f}" + (f" ±{s:.{digits}f}" if n > 1 else ""))
            rv[name] = m
        rows.append(row)
        raw.append(rv)
    out = pd.DataFrame(rows)
    best = {}
    if raw:
        r = pd.DataFrame(raw)
        for name, _ in cols:
            v = pd.to_numeric(r[name], errors="coerce")
            if v.notna().any():
                best[name] = int(v.idxmin() if name.startswith("burden") else v.idxmax())
    return out, best


def _run_notes(df: pd.DataFrame) -> list[tuple[str, int]]:
    """Distinct entries of the runs' ``notes`` lists (flattened to JSON text), with counts."""
    counts: dict[str, int] = {}
    for v in df.get("notes", pd.Series(dtype=object)):
        try:
            items = json.loads(v) if isinstance(v, str) else []
        except ValueError:
            items = [v]
        for t in items if isinstance(items, list) else [items]:
            counts[str(t)] = counts.get(str(t), 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _fmt_num(v: Any, digits: int | None) -> str:
    """Numbers with a fixed number of decimals per column; integers (fold, seed) as integers."""
    if digits is None:
        if isinstance(v, float) and not pd.isna(v) and v.is_integer():
            return str(int(v))
        return fmt(v)
    return fmt(v, digits)


def _runs_table(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    cols = [("backbone", "backbone"), ("schedule", "schedule"), ("fold", "dataset.fold"), ("seed", "seed"),
            ("status", "status"), ("segm AP", SEGM_AP), ("infection AP", class_col("infection")),
            ("bbox AP", "metrics.bbox.AP"), ("Dice infection", "metrics.dice.mean.infection"),
            ("train s/iter", "timing.train_s_per_iter"), ("infer s/image", "timing.infer_s_per_image"),
            ("peak RSS MB", "memory.peak_rss_mb"), ("peak GPU MB", "memory.peak_gpu_mb"),
            ("params M", "model.params_m"), ("run dir", "run_dir"), ("schema note", "schema_note")]
    digits = {"segm AP": 2, "infection AP": 2, "bbox AP": 2, "Dice infection": 3, "train s/iter": 3,
              "infer s/image": 3, "peak RSS MB": 0, "peak GPU MB": 0, "params M": 1}
    out = pd.DataFrame({label: [_fmt_num(v, digits.get(label)) for v in df[c]] if c in df.columns else ["-"] * len(df)
                        for label, c in cols})
    return out, ["failed" if s != "ok" else "" for s in df["status"]] if not df.empty else []


def render(*, sweep_dir: str, groups: Groups, t3: pd.DataFrame, winners: list[dict[str, Any]],
           failed: pd.DataFrame, missing: list[dict[str, Any]], plots: list[Plot], notes: list[str],
           files: list[str], planned: int | None, leak: pd.DataFrame, volume3d: pd.DataFrame,
           volume3d_verdicts: list[str], method: list[str], volume3d_settings: list[str],
           false_positives: pd.DataFrame) -> str:
    """The whole page as one string (``planned``: the number of runs in the sweep's plan,
    None without one: then the runs found are what is expected)."""
    paper = load_paper()
    df = groups.df
    parts = _head(sweep_dir, df, notes, len(missing), planned)
    parts += _winner_cards(winners, method)
    parts += _leak_section(leak)
    parts += _table3_section(t3, paper)
    parts.append(_false_positive_section(false_positives))
    parts.append(_volume3d_section(volume3d, volume3d_verdicts, volume3d_settings))
    parts += _failures_section(failed, missing)
    parts += _plots_section(plots)
    parts += _per_class_section(groups, paper)
    parts.append("<h2>Run settings and environment</h2><div class='cards'>"
                 f"<div style='flex:1 1 420px'><h3>Settings</h3>{_kv_table(df, SETTINGS)}</div>"
                 f"<div style='flex:1 1 420px'><h3>Environment</h3>{_kv_table(df, ENV)}</div></div>")
    run_notes = _run_notes(df)
    if run_notes:
        parts.append("<h3>Notes the runs recorded</h3><ul>"
                     + "".join(f"<li>{escape(t)} ({k} run{'s' if k > 1 else ''})</li>" for t, k in run_notes) + "</ul>")
    runs, rc = _runs_table(df)
    parts.append(f"<h2>Every run ({len(df)})</h2>")
    parts.append(_table(runs, table_id="runs", row_class=rc,
                        num_cols=[c for c in runs.columns if c not in ("backbone", "schedule", "status", "run dir", "schema note")]))
    parts.append("<h2>Files</h2><ul>" + "".join(f"<li><code>{escape(f)}</code></li>" for f in files) + "</ul>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _head(sweep_dir: str, df: pd.DataFrame, notes: list[str], n_missing: int, planned: int | None) -> list[str]:
    """The page's head, its counts of runs and the banners: smoke run, notes, problems."""
    n, n_ok = len(df), int((df["status"] == "ok").sum()) if not df.empty else 0
    expected = (f"of {planned} planned run(s)" if planned is not None
                else "no sweep.json: the runs are the result.json files found")
    smoke = (not df.empty and "solver.name" in df.columns and (df["solver.name"] == "smoke").any())
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>lungbench report: {escape(str(sweep_dir))}</title><style>{CSS}</style></head><body><main>"]
    parts.append("<h1>lungbench: Mask R-CNN backbones on CT lung + COVID-19 infection</h1>")
    parts.append(f"<div class='sub'>Sweep <code>{escape(str(sweep_dir))}</code> · built "
                 f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</div>")
    parts.append("<div class='summary'>"
                 f"<span class='pill' id='n-runs'>{n} run(s)</span><span class='pill ok' id='n-ok'>{n_ok} ok</span>"
                 f"<span class='pill fail' id='n-failed'>{n - n_ok} FAILED</span>"
                 f"<span class='pill miss' id='n-missing'>{n_missing} MISSING ({expected})</span></div>")
    if smoke:
        # runs at one budget in compute are comparable with each other at that budget (the tests
        # say how sure); runs at unequal budgets compare trainings, not backbones
        tf = tables.training_tflop(ok_rows(df))
        equal = bool(tf.notna().all() and not tf.empty and tables.compute_remark(df) is None)
        other = (f"they compare with each other only as trainings of {tf.mean():.3g} training TFLOPs each"
                 if equal else "nor to each other (unequal training budgets)")
        parts.append('<div class="banner smoke" id="smoke-warning">SMOKE RUN: these models trained briefly '
                     "(solver 'smoke') to check that the pipeline works. Their numbers are NOT "
                     f"comparable to the paper; {escape(other)}.</div>")
    if notes:
        parts.append("<div class='banner notes'><b>Notes</b><ul>" + "".join(f"<li>{escape(x)}</li>" for x in notes) + "</ul></div>")
    if n - n_ok or n_missing:
        parts.append(f"<div class='banner bad' id='problems'><b>{n - n_ok} FAILED, {n_missing} MISSING</b>: see "
                     "<a href='#failures'>failed and missing runs</a>.</div>")
    return parts


def _winner_cards(winners: list[dict[str, Any]], method: list[str]) -> list[str]:
    """One card per class (and the mean): the leading group and what the paired tests say."""
    parts = ["<h2>Best per class (paired test over cases)</h2><div class='cards'>"]
    for w in winners:
        color = _CLASS_CSS.get(w["what"], "#888")
        if w["winner"] is None:
            parts.append(f"<div class='card' style='--c:{color}'><div class='what'>{escape(w['what'])}</div>"
                         "<div class='who'>-</div><div class='val'>no successful run</div></div>")
            continue
        if w.get("verdict") == TIED_ZERO:  # nothing learnt this class: no name to show
            parts.append(f"<div class='card' style='--c:{color}'><div class='what'>{escape(w['what'])}</div>"
                         f"<div class='who'>-</div><div class='val'>segm AP 0.00 for every group</div>"
                         f"<div class='more'>{escape(TIED_ZERO)}</div></div>")
            continue
        lead = "" if w["significant"] else "highest mean, not a winner: "
        more = escape(lead + w["verdict"])  # tables.winners: every winner has the tests' verdict
        parts.append(f"<div class='card' style='--c:{color}'><div class='what'>{escape(w['what'])}</div>"
                     f"<div class='who'>{escape(w['winner'])}</div>"
                     f"<div class='val'>segm AP {escape(fmt_pm(w['AP'], w['std'], w['n']))}</div>"
                     f"<div class='more'>{more}</div></div>")
    parts.append("</div>")
    parts.append("<details id='method'><summary>What the verdicts mean, and which family each correction "
                 "covers</summary><ul>" + "".join(f"<li>{escape(m)}</li>" for m in method)
                 + f"<li>pairwise.csv states the selection on every row (<code>selection</code>: "
                   f"{escape(SELECTION)}); verdicts.csv holds one verdict per metric and class.</li></ul></details>")
    return parts


def _leak_section(leak: pd.DataFrame) -> list[str]:
    """The measured leak of a slice split (reports.stats.leak); nothing without one."""
    if leak.empty:
        return []
    parts = ["<h2 id='leak'>The leak: slices of one patient in train and test</h2>"]
    parts.append("<p>The same backbone trained and tested on the same folds, split by patient "
                 "(<code>patient_kfold</code>) and by slice (<code>slice_random</code>, the paper's likely, "
                 "unstated protocol): a slice split puts neighbouring, nearly identical slices of one "
                 "patient in train and test. Gap = slice_random − patient_kfold, per case (segm AP), "
                 "with a 95% bootstrap interval and a one-sided paired Wilcoxon p-value of a positive "
                 f"gap (no interval under {MIN_CASES} cases). A positive gap is score that a patient-level test does not "
                 "confirm; it measures the leak on these data, not on any other dataset.</p>")
    shown = leak.assign(**{"class": leak["class"].map(lambda c: CLASS_LABELS.get(c, "mean of classes")),
                           "gap [95% CI]": [f"{fmt(g)} [{fmt(lo)}, {fmt(hi)}]" for g, lo, hi in
                                            zip(leak["gap"], leak["ci_low"], leak["ci_high"])]})
    shown = shown[["backbone", "class", "n_cases", "patient_kfold", "slice_random", "gap [95% CI]", "p"]]
    parts.append(_table(shown.map(lambda v: fmt(v) if isinstance(v, float) else v), table_id="leak-table",
                        num_cols=["n_cases", "patient_kfold", "slice_random", "gap [95% CI]", "p"]))
    return parts


def _table3_section(t3: pd.DataFrame, paper: dict[str, Any]) -> list[str]:
    """Table 3 beside the paper, the best of ours in bold green, and how they are compared."""
    disp = table3_display(t3)
    row_class = ["paper" if po else "missing" if r == 0 else ("failed" if ok == 0 else "")
                 for po, r, ok in zip(t3["paper_only"], t3["n_runs"], t3["n_ok"])]
    best = {}
    for col, raw in (("Ours: infection AP (segm)", "infection_AP"), ("Ours: mean segm AP (3 classes)", "mean_AP")):
        v = pd.to_numeric(t3[raw], errors="coerce")
        if v.notna().any() and v.max() > 0:  # no "best" among zeros
            best[col] = int(v.idxmax())
    return ["<h2>Table 3: ours beside the paper</h2>",
            _table(disp, table_id="table3", row_class=row_class, best=best,
                   num_cols=[c for c in disp.columns if c.startswith(("Ours", "Paper", "Δ"))]),
            "<details open><summary>How ours is compared with the paper</summary><ul>"
            + "".join(f"<li>{escape(a)}</li>" for a in paper["assumptions"])
            + f"<li>Paper: {escape(paper['source'])}. Metric: {escape(paper['metric'])}.</li>"
            + "<li>Ours: mean ± sample std over folds/seeds with n successful runs; bold green = best.</li></ul></details>"]


def _failures_section(failed: pd.DataFrame, missing: list[dict[str, Any]]) -> list[str]:
    parts = ["<h2 id='failures'>Failed and missing runs</h2>"]
    if failed.empty and not missing:
        parts.append("<p>None: every expected run has a result and every run succeeded.</p>")
    if not failed.empty:
        parts.append(f"<h3>FAILED ({len(failed)})</h3>")
        fr = failed.rename(columns={"error_reason": "reason", "dataset.fold": "fold", "run_dir": "run dir"})
        parts.append(_table(fr.map(lambda v: fmt(v)), table_id="failed"))
    if missing:
        parts.append(f"<h3>MISSING ({len(missing)})</h3>")
        parts.append(_table(pd.DataFrame(missing).rename(columns={"what": "missing"}), table_id="missing"))
    return parts


def _plots_section(plots: list[Plot]) -> list[str]:
    parts = ["<h2>Plots</h2>"]
    for p in plots:
        parts.append(f"<figure><h3>{escape(p.title)}</h3>")
        if p.png is not None:
            parts.append(_img(p.png, p.title) + f"<figcaption>{escape(p.caption)}</figcaption>")
        if p.note:
            parts.append(f"<div class='skip'>{'Skipped: ' if p.png is None else 'Note: '}{escape(p.note)}</div>")
        parts.append("</figure>")
    return parts


def _per_class_section(groups: Groups, paper: dict[str, Any]) -> list[str]:
    """The Table 2 mirror: per group, segm and bbox AP, Dice per class and the burden error."""
    per_class, best_pc = _per_class_wide(groups)
    parts = ["<h2>Per-class results (Table 2 mirror)</h2>"]
    if per_class.empty:
        parts.append("<p>No runs.</p>")
        return parts
    short = {c: c.removeprefix("segm AP ").removeprefix("bbox AP ").removeprefix("Dice ") for c in per_class.columns}
    short["burden abs err (pp)"] = "abs error (pp)"
    header = [("", 1), ("mask (segm) AP", 3), ("box (bbox) AP", 3), ("Dice (mean per case)", 3), ("infection burden", 1)]
    parts.append(_table(per_class, table_id="per-class", best=best_pc, header_groups=header, labels=short,
                        num_cols=[c for c in per_class.columns if c != "backbone"]))
    t2 = paper["table2_r50_fpn"]
    parts.append("<div class='sub'>Paper, Table 2 (R50-FPN, mask AP): "
                 + ", ".join(f"{CLASS_LABELS[c]} {t2[c]}" for c in CLASS_NAMES)
                 + ". AP75/AP50 and every fold are in <code>per_class_ap.csv</code>.</div>")
    return parts


def _volume3d_section(t: pd.DataFrame, verdicts: list[str], settings: list[str]) -> str:
    """Dice and NSD per patient on whole volumes, on both lung definitions, the published
    numbers beside the lungs as labelled only (reports.volume3d)."""
    head = "<h2 id='volume3d'>3-D on whole volumes: Dice and surface Dice per patient</h2>"
    if t.empty:
        return (head + "<p id='volume3d-none'>No run holds 3-D metrics: runs of result.json schema &lt; 3, "
                "or the source volumes the dataset was converted from were not there when they were "
                "evaluated (each run's notes say which).</p>")
    ours = t[t["source"] == "ours"]
    parts = [head, "<p>Per test case, on every slice of the source volume (also those the converter did not "
             "keep for training, where a false positive counts), from the same prediction code as "
             "<code>make predict</code>: Dice, and normalised surface Dice (NSD) at 1 mm for the lungs and 3 mm "
             "for infection, the tolerances of the dataset's benchmark (surface elements weighted by area, as "
             "DeepMind's surface-distance code that benchmark uses). The lungs on two definitions: as labelled "
             "(label 1 / 2 alone, without the infection inside them), which is how the benchmark's evaluation "
             "script scores them and so the only one the published numbers sit beside; and whole (each lung "
             "with its infection, as the release's lung masks hold them). Infection is the same in both. Ours: "
             f"mean over cases in % with a 95% bootstrap interval (none under {MIN_CASES} cases); theirs: the "
             "published means.</p>"]
    if settings:
        parts.append("<ul id='volume3d-settings'>" + "".join(f"<li>{escape(x)}</li>" for x in settings) + "</ul>")
    groups = set(ours["group"])
    for view, (title, metrics, with_refs) in VIEWS.items():
        shown = t[t["metric"].isin(metrics) & ((t["source"] == "ours") | with_refs)]
        if shown.empty or not (shown["source"] == "ours").any():
            parts.append(f"<h3>{escape(title)}</h3><p class='skip' id='volume3d-{view}-none'>No run holds these "
                         "(result.json schema &lt; 4 scores whole lungs only).</p>")
            continue
        w = wide(shown, view)
        row_class = ["paper" if b not in groups else "" for b in w["backbone"]]
        parts.append(f"<h3>{escape(title)}</h3>")
        parts.append(_table(w, table_id="volume3d-table" if view == "whole" else f"volume3d-{view}",
                            row_class=row_class, num_cols=[c for c in w.columns if c != "backbone"]))
    refs = t[t["source"] != "ours"].drop_duplicates("group")
    parts.append("<details open><summary>What these numbers can and cannot mean</summary><ul>"
                 + "".join(f"<li>{escape(str(r['group']))}: {escape(str(r['verdict']))} (source: "
                           f"{escape(str(r['source']))})</li>" for _, r in refs.iterrows())
                 + "<li>Their numbers are 3-D nnU-Net models on the real CT; a demo or smoke sweep on phantom "
                   "volumes is not comparable with them: the rows only sit side by side.</li>"
                 + "".join(f"<li>{escape(v)}</li>" for v in verdicts) + "</ul></details>")
    return "\n".join(parts)


def _false_positive_section(fp: pd.DataFrame) -> str:
    """The false positives per-case AP cannot see (reports.tables.false_positives)."""
    if fp.empty:
        return ""
    shown = pd.DataFrame({
        "backbone": fp["group"], "class": fp["class"].map(lambda c: CLASS_LABELS.get(c, c)),
        "segm AP (cases with the class)": [f"{fmt(a)} (n={n})" for a, n in zip(fp["segm_AP"], fp["n_cases_with"])],
        "cases without the class": fp["n_cases_without"].astype(int).astype(str),
        "false instances there (score >= Dice threshold)": [fmt(v, 1) for v in fp["fp_instances"]],
        "cases with any": fp["cases_with_fp"].astype(int).astype(str),
        "false instances there (any score)": [fmt(v, 1) for v in fp["fp_instances_any"]],
    })
    return ("<h2 id='false-positives'>False positives where per-case AP cannot see them</h2>"
            "<p>A class absent from a test case has no AP in that case (COCO leaves it out), so a confident "
            "false infection on a patient without infection costs the per-case AP nothing (Dice does count "
            "it). Here, per backbone and class, the predicted instances of that class on the cases without it "
            "(per case the mean over the group's runs; every case in <code>per_case.csv</code>, columns "
            "<code>fp_no_gt</code> and <code>fp_no_gt_any</code>).</p>"
            + _table(shown, table_id="false-positives-table",
                     num_cols=[c for c in shown.columns if c not in ("backbone", "class")]))
