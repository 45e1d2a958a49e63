"""The report page in a real browser: headless Chromium renders every heatmap, hovering a cell
shows its values, the axis selector redraws, and nothing is logged as an error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.slow  # the main job in a subprocess, and the browser
CHROMIUM = next(
    filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
)
ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("page")
    proc = subprocess.run(
        [sys.executable, "-m", "src.stability_map", "--quiet", "--validate", "0",
         "--optimizers", "sgd,momentum,adam",
         "--lr", "1e-4:1:21", "--n", "1:24", "--batch-size", "8,32", "--epochs", "60",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out / "index.html"


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)")
def test_page_renders_and_answers_hover(report: Path) -> None:
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        canvases = page.locator("#maps canvas")
        assert canvases.count() == 3
        for i in range(3):  # every heatmap drew many colours, not a blank canvas
            colours = canvases.nth(i).evaluate(
                """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                          const s = new Set(); for (let k = 0; k < d.length; k += 4)
                          s.add(d[k] << 16 | d[k + 1] << 8 | d[k + 2]); return s.size; }"""
            )
            assert colours > 20, (i, colours)
        box = canvases.nth(0).bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.45)
        tip = page.locator("#tip")
        assert tip.is_visible()
        text = tip.inner_text()
        assert "sgd  lr = " in text and "status: " in text and "prediction at x = 25" in text
        assert "batch size 8" in text
        page.select_option("#select-batch_size", "1")
        page.mouse.move(box["x"] + box["width"] * 0.6 + 1, box["y"] + box["height"] * 0.45)
        assert "batch size 32" in tip.inner_text()
        page.mouse.move(1, 1)
        assert not tip.is_visible()
        browser.close()
    assert not errors, errors


def test_large_grids_are_thinned_for_display_with_a_note(
    report: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import re

    from src import page
    from src.stability_map import load

    ds = load(report.parent)
    monkeypatch.setattr(page, "MAX_CELLS", 1000)
    html = page.index_html(ds, {}, [], [], [], {"loss_curves.png": b"", "critical_lr.png": b""},
                           (-8.0, 2.0))  # fmt: skip
    data = json.loads(
        re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S)[1]
    )
    assert (
        data["stride"] > 1 and len(data["lr"]) < ds.sizes["lr"] and len(data["n"]) < ds.sizes["n"]
    )
    assert "is shown with every" in html and "holds every cell" in html
    shown = len(data["optimizers"]) * len(data["lr"]) * len(data["n"]) * len(data["slices"])
    assert shown <= 1000
