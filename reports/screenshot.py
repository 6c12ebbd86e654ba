"""A PNG of a report.html's first screen, taken by a headless chromium (the browser the tests
use): the picture the README shows.

    python -m reports.screenshot work/sweeps/demo/report/report.html docs/img/report.png

The browser runs with a throw-away profile, no network services and no GPU; the page is
self-contained (images embedded), so nothing is fetched. The PNG is written to a temp file
next to the target and renamed into place.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1200, 900)
#: a report is text, tables and plots on white: 256 colours keep it readable at a fraction of the size
COLORS = 256


class ScreenshotError(RuntimeError):
    """No browser, or the browser made no picture."""


def find_chromium() -> str | None:
    """The browser: `chromium` (Debian's name) or `chromium-browser` on PATH, else Debian's path."""
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return str(DEBIAN_CHROMIUM) if DEBIAN_CHROMIUM.is_file() else None


def chromium_args(profile: str, window: tuple[int, int]) -> list[str]:
    """Flags for a headless, offline, throw-away browser (as the browser tests run it)."""
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}"]


def screenshot(html: str | Path, png: str | Path, window: tuple[int, int] = WINDOW) -> Path:
    """Render ``html`` in a headless chromium and write its first ``window`` of pixels to ``png``
    in COLORS colours.

    Raises FileNotFoundError for a missing page and ScreenshotError when there is no browser or
    it wrote no picture (its last output is in the message)."""
    html, png = Path(html).resolve(), Path(png)
    if not html.is_file():
        raise FileNotFoundError(f"{html}: no such report (make report SWEEP=<sweep dir> writes one)")
    browser = find_chromium()
    if browser is None:
        raise ScreenshotError("chromium not found (not on PATH as chromium or chromium-browser); "
                              "Debian: apt-get install -y chromium")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        shot = Path(work) / "shot.png"
        out = subprocess.run([browser, *chromium_args(str(Path(work) / "profile"), window),
                              f"--screenshot={shot}", html.as_uri()],
                             capture_output=True, text=True, timeout=120)
        if not shot.is_file():
            raise ScreenshotError(f"chromium wrote no screenshot of {html} (exit {out.returncode}): "
                                  f"{out.stderr[-2000:]}")
        img = Image.open(shot).convert("RGB").quantize(colors=COLORS, method=Image.Quantize.MEDIANCUT)
        tmp = png.with_name(f".{png.name}.tmp")
        img.save(tmp, format="PNG", optimize=True)
        tmp.replace(png)
    return png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.screenshot", description=__doc__.split("\n\n")[0])
    p.add_argument("html", help="a report.html (e.g. <sweep dir>/report/report.html)")
    p.add_argument("png", help="the PNG to write")
    p.add_argument("--width", type=int, default=WINDOW[0])
    p.add_argument("--height", type=int, default=WINDOW[1])
    a = p.parse_args(argv)
    try:
        out = screenshot(a.html, a.png, window=(a.width, a.height))
    except (FileNotFoundError, ScreenshotError) as e:
        print(f"screenshot: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
