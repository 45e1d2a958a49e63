"""The default report's page as a reader gets it: its size and how long headless Chromium takes
to load it and draw its first frame (targets: under 2 MB, under 2 s on the 2-core machine)."""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from src.runner import run
from src.spec import Sweep
from src.stability_map import render

from . import slow

LOADS = 3
"""Page loads timed; the median is tracked."""


def load_seconds(page: Path, loads: int = LOADS) -> float:
    """Median seconds from navigation to the first frame drawn after ``load``, in headless
    Chromium (NaN where playwright or Chromium is missing)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return math.nan
    if chromium is None:
        return math.nan
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for _ in range(loads):
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            t0 = time.perf_counter()
            tab.goto(page.as_uri(), wait_until="load")
            tab.evaluate("() => new Promise(r => requestAnimationFrame(() => r()))")
            times.append(time.perf_counter() - t0)
            tab.close()
        browser.close()
    return statistics.median(times)


@slow
class DefaultPage:
    """``index.html`` of the default map (focus panel, stored loss curves and all)."""

    timeout = 900

    def setup_cache(self) -> dict[str, float]:
        ds, _ = run(Sweep())
        with tempfile.TemporaryDirectory() as out:
            page = render(ds, out)
            return {"megabytes": page.stat().st_size / 1e6, "seconds": load_seconds(page)}

    def track_page_megabytes(self, cache: dict[str, float]) -> float:
        return cache["megabytes"]

    track_page_megabytes.unit = "MB"  # type: ignore[attr-defined]

    def track_page_load_seconds(self, cache: dict[str, float]) -> float:
        return cache["seconds"]

    track_page_load_seconds.unit = "seconds"  # type: ignore[attr-defined]
