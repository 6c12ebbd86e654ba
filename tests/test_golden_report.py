"""The report of a stored sweep, byte for byte: a refactoring must not change a report.

``tests/golden/stored`` is a small sweep as lungbench lays it out (owner marker, sweep.json
with a planned run that never ran, twelve result.json of four backbones over three folds, one
failed, per-case and 3-D metrics, training logs and predictions) and the tiny dataset its
overlays read (paths relative to that folder). ``tests/golden/report`` is the report built from
it. Every CSV and table3.md must be the same bytes; report.html the same apart from the build
time, the sweep's absolute path and the pixels of its embedded PNGs (those depend on the
matplotlib and FreeType builds; the figures' names and captions are compared).

An intended change to the report: ``LUNGBENCH_UPDATE_GOLDEN=1 pytest tests/test_golden_report.py``
rewrites the expected files; review their diff before committing it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from reports.build import build_report

GOLDEN = Path(__file__).resolve().parent / "golden"
STORED = GOLDEN / "stored"
EXPECTED = GOLDEN / "report"
TEXT_SUFFIXES = (".csv", ".md")


def normalise_html(html: str, sweep_dir: Path) -> str:
    """report.html without what legitimately differs between two builds of the same sweep."""
    html = html.replace(str(sweep_dir), "{SWEEP_DIR}")
    html = re.sub(r"built \d{4}-\d\d-\d\d \d\d:\d\d UTC", "built {TIME}", html)
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,{PNG}", html)


def test_report_of_the_stored_sweep_is_unchanged(tmp_path, monkeypatch):
    work = tmp_path / "golden"
    shutil.copytree(STORED, work)
    monkeypatch.chdir(work)  # the stored results name their dataset relative to this folder
    html_path = build_report(Path("sweep"), progress=False)
    out = html_path.parent
    got = {p.name: p.read_text() for p in sorted(out.iterdir()) if p.suffix in TEXT_SUFFIXES}
    got["report.html"] = normalise_html(html_path.read_text(), (work / "sweep").resolve())
    pngs = sorted(p.name for p in out.glob("*.png"))
    got["figures.txt"] = "\n".join(pngs) + "\n"
    if os.environ.get("LUNGBENCH_UPDATE_GOLDEN") == "1":
        shutil.rmtree(EXPECTED, ignore_errors=True)
        EXPECTED.mkdir(parents=True)
        for name, text in got.items():
            (EXPECTED / name).write_text(text)
        pytest.skip(f"rewrote {EXPECTED}: review its diff")
    want = {p.name: p.read_text() for p in sorted(EXPECTED.iterdir())}
    assert sorted(got) == sorted(want), "the report's files changed"
    for name in want:
        assert got[name] == want[name], f"{name} differs from {EXPECTED / name}"
