"""reports.screenshot: the README's picture of a report, made by a real headless chromium.

Without chromium the browser tests skip, or fail where LUNGBENCH_REQUIRE_CHROMIUM=1 (CI)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from contracts.catalog import BACKBONES
from reports import build, screenshot
from tests.synthetic import write_plan, write_sweep


def test_missing_report_is_a_clear_error(tmp_path, capsys):
    assert screenshot.main([str(tmp_path / "nope.html"), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "nope.html: no such report" in err and "make report" in err
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def browser() -> str:
    found = screenshot.find_chromium()
    if found is None:
        msg = "chromium not found (Debian: apt-get install -y chromium)"
        if os.environ.get("LUNGBENCH_REQUIRE_CHROMIUM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return found


@pytest.mark.slow
def test_screenshot_of_a_report_shows_it(browser, tmp_path):
    sweep = tmp_path / "sweep"
    files = write_sweep(sweep, tmp_path / "data", backbones=BACKBONES)
    write_plan(sweep, [(str(f.parent.relative_to(sweep)), json.loads(f.read_text())) for f in files])
    html = build.build_report(sweep, progress=False)
    png = tmp_path / "img" / "report.png"

    assert screenshot.main([str(html), str(png), "--width", "1000", "--height", "700"]) == 0
    img = Image.open(png)
    assert img.size == (1000, 700)
    px = np.asarray(img.convert("L"), dtype=float)
    assert px.std() > 20, f"the picture looks blank (pixel std {px.std():.1f})"
    # dark text on the white page: the top fifth (title, run counts) is not empty
    assert (px[: 700 // 5] < 100).mean() > 0.005
    assert sorted(p.name for p in png.parent.iterdir()) == ["report.png"]  # no temp file left
