"""The report page in a real browser: headless Chromium renders every heatmap, hovering a cell
shows its values, the axis selector redraws, the focus panel answers and advises, zoom, click and
tooltip work, a phone-sized window needs no horizontal scroll, the statuses' colours survive
colour-vision deficiencies, and nothing is logged as an error."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
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
         "--lr", "1e-4:1:21", "--n", "1:24", "--batch-size", "8,32", "--epochs", "80",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out / "index.html"


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)")
def test_page_renders_and_answers_hover(report: Path) -> None:
    with opened(report) as page:
        canvases = page.locator("#maps canvas")
        assert canvases.count() == 3
        for i in range(3):  # every heatmap drew many colours, not a blank canvas
            colours = canvases.nth(i).evaluate(
                """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                          const s = new Set(); for (let k = 0; k < d.length; k += 4)
                          s.add(d[k] << 16 | d[k + 1] << 8 | d[k + 2]); return s.size; }"""
            )
            assert colours > 20, (i, colours)
        canvases.nth(0).scroll_into_view_if_needed()
        box = canvases.nth(0).bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.45)
        tip = page.locator("#tip")
        assert tip.is_visible()
        text = tip.inner_text()
        assert "sgd  lr = " in text and "status: " in text and "prediction at x = 25" in text
        assert "batch size 32" in text  # the focus's slice: the seed's batch size
        page.select_option("#select-batch_size", "0")
        page.mouse.move(box["x"] + box["width"] * 0.6 + 1, box["y"] + box["height"] * 0.45)
        assert "batch size 8" in tip.inner_text()
        page.mouse.move(1, 1)
        assert not tip.is_visible()


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
                           curves=False)  # fmt: skip
    data = json.loads(
        re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S)[1]
    )
    assert (
        data["stride"] > 1 and len(data["lr"]) < ds.sizes["lr"] and len(data["n"]) < ds.sizes["n"]
    )
    assert "is shown with every" in html and "holds every cell" in html
    shown = len(data["optimizers"]) * len(data["lr"]) * len(data["n"]) * len(data["slices"])
    assert shown <= 1000


@contextlib.contextmanager
def opened(report: Path, width: int = 1200, height: int = 900, scale: float = 1) -> Iterator:
    """The page in headless Chromium; on leaving, nothing may have been logged as an error."""
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(
            viewport={"width": width, "height": height}, device_scale_factor=scale
        )
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        yield page
        browser.close()
    assert not errors, errors


INK = """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let k = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0) k++;
                return k; }"""
"""Painted pixels of a canvas."""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)")
def test_focus_panel_answers_and_advises(report: Path) -> None:
    """The seed's own call opens the page: its verdict (overflow at epoch 66, as the map
    says), why, the simulated fixes (one of which works), and the loss-against-lr plot."""
    from src.stability_map import load

    ds = load(report.parent)
    cell = ds.sel(optimizer="sgd", lr=0.01, n=20, batch_size=32).isel(seed=0, epochs=0)
    with opened(report, 1200, 900) as page:
        panel = page.locator("#focus")
        text = panel.inner_text()
        assert "sgd at lr 0.01, N = 20, batch size 32" in text
        epoch = int(cell.first_nonfinite_epoch)
        assert epoch > 0 and f"overflow: the loss became inf/nan at epoch {epoch}" in text
        assert "1.44 times the critical lr 0.006931" in text
        fixes = page.locator("#fixes tr")
        assert fixes.count() >= 5  # a header and four fixes or more
        assert "half the critical lr" in text and "standardise x" in text and "Adam" in text
        assert page.locator("#fixes tr.works").count() >= 1
        assert page.locator("#lr-slice").evaluate(INK) > 2000
        legend = page.locator("#lr-slice-legend").inner_text()
        assert all(name in legend for name in ("sgd", "momentum", "adam"))


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)")
def test_zoom_click_and_tooltip(report: Path) -> None:
    """Zooming narrows the visible range, a click draws the cell's loss curve, and the
    tooltip stays inside the window at the window's corners."""
    with opened(report, 1000, 700) as page:
        shown = page.locator("#view-range")
        whole = shown.inner_text()
        assert "(21 of 21)" in whole and "(24 of 24)" in whole
        page.click("#zoom-in")
        zoomed = shown.inner_text()
        assert zoomed != whole and "of 21)" in zoomed and "(21 of 21)" not in zoomed
        page.click("#zoom-reset")
        assert shown.inner_text() == whole

        canvas = page.locator("#maps canvas").first
        assert page.locator("#pinned").is_hidden()
        box = canvas.bounding_box()
        canvas.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.4})
        assert page.locator("#pinned").is_visible()
        assert page.locator("#curve").evaluate(INK) > 500
        assert "sgd, lr " in page.locator("#curve-title").inner_text()

        tip = page.locator("#tip")
        for canvas, scroll, (fx, fy) in (
            (page.locator("#maps canvas").first, "start", (0.2, 0.08)),
            (page.locator("#maps canvas").last, "end", (0.97, 0.85)),
        ):
            canvas.evaluate(f"c => c.scrollIntoView({{block: '{scroll}', inline: 'nearest'}})")
            box = canvas.bounding_box()
            page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
            assert tip.is_visible()
            r = tip.bounding_box()
            assert r["x"] >= 0 and r["y"] >= 0, r
            assert r["x"] + r["width"] <= 1000 and r["y"] + r["height"] <= 700, r


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)")
def test_phone_width_needs_no_horizontal_scroll(report: Path) -> None:
    with opened(report, 390, 844, scale=3) as page:
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        canvas = page.locator("#maps canvas").first
        width = canvas.evaluate("c => c.width")
        assert width == 3 * round(canvas.bounding_box()["width"])  # drawn at the pixel ratio


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)")
def test_statuses_stay_apart_under_colour_vision_deficiency(report: Path) -> None:
    """Every status drawn on the maps uses its palette, and the palettes of different statuses
    stay :data:`src.page.CVD_MIN_DISTANCE` apart (CAM02-UCS) for normal vision and under a
    full deuteranopia and protanopia simulation."""
    colorspacious = pytest.importorskip("colorspacious")
    import itertools

    import numpy as np

    from src import page as page_module

    with opened(report) as page:
        palette = page.evaluate("D.palette")
        # the colour of the centre pixel of one displayed cell of each status
        seen = page.evaluate(
            """() => { const out = {}, s = slice(), c = document.querySelector('#maps canvas');
                const g = geom(c), x = c.getContext('2d'), r = window.devicePixelRatio || 1;
                for (let k = 0; k < s.status.length && k < nN * nLr; k++) {
                  const st = s.status[k]; if (st in out) continue;
                  const i = k % nLr, j = Math.floor(k / nLr);
                  const X = px(g, i + 0.5) * r, Y = py(g, j + 0.5) * r;
                  const rgb = x.getImageData(Math.round(X), Math.round(Y), 1, 1).data;
                  out[st] = Array.from(rgb.slice(0, 3));
                } return out; }"""
        )
    assert len(seen) == 4, seen

    def rgb(h: str) -> np.ndarray:
        return np.array([int(h[k : k + 2], 16) for k in (1, 3, 5)]) / 255

    def near(colour: list[int], ends: list[str]) -> bool:  # on the segment between the ends
        a, b, c = rgb(ends[0]), rgb(ends[1]), np.array(colour) / 255
        t = np.clip(np.dot(c - a, b - a) / max(np.dot(b - a, b - a), 1e-12), 0, 1)
        return bool(np.abs(a + t * (b - a) - c).max() < 4 / 255)

    for st, colour in seen.items():
        assert near(colour, palette[int(st)]), (st, colour, palette[int(st)])
    for cvd in (None, "deuteranomaly", "protanomaly"):
        space = "sRGB1" if cvd is None else {"name": "sRGB1+CVD", "cvd_type": cvd, "severity": 100}
        sim = [  # the shades' ends of converged and slow; the flat fills of the others
            [np.clip(colorspacious.cspace_convert(rgb(h), space, "sRGB1"), 0, 1) for h in ends]
            for ends in (palette[0], palette[1], palette[2][:1], palette[3][:1])
        ]
        for a, b in itertools.combinations(range(4), 2):
            for x in sim[a]:
                for y in sim[b]:
                    d = colorspacious.deltaE(x, y, input_space="sRGB1")
                    assert d >= page_module.CVD_MIN_DISTANCE, (cvd, a, b, d)


def test_focus_off_the_grid_is_shown_at_the_nearest_cell_and_never_thinned(
    report: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A map whose lr grid lacks 0.01, thinned for display: the seed's panel and marker are
    still there, at the nearest cell, and N = 20 is displayed."""
    import json
    import re

    import numpy as np

    from src import focus, page
    from src.stability_map import load

    ds = load(report.parent)
    ds = ds.isel(lr=[k for k in range(ds.sizes["lr"]) if not np.isclose(ds.lr[k], 0.01)])
    monkeypatch.setattr(page, "MAX_CELLS", 400)
    panel, _ = focus.panel(ds)
    assert not panel["exact"] and panel["n"] == 20 and panel["optimizer"] == "sgd"
    neighbours = [v for v in (10**-2.2, 10**-1.8) if np.isclose(panel["lr"], v)]
    assert neighbours  # a nearest grid lr in log scale (0.01 lies halfway between two)
    html = page.index_html(ds, {}, [], [], [], {"loss_curves.png": b"", "critical_lr.png": b""},
                           focus=panel, curves=False)  # fmt: skip
    data = json.loads(
        re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S)[1]
    )
    assert data["stride"] > 1
    assert 20 in data["n"] and panel["lr"] in data["lr"]
    assert data["focus"]["j"] == data["n"].index(20)
    assert data["marks"][0] == [data["lr"].index(panel["lr"]), data["n"].index(20), 1]
    assert "The grid lacks <code>sgd:0.01:20:32</code> exactly" in html
    assert f"Your configuration: sgd at lr {panel['lr']:.4g}, N = 20" in html


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)")
def test_own_noisy_table_has_a_selector_per_draw(tmp_path: Path) -> None:
    """A map of a user's table with three features and swept noise: the page names the file
    and d, has a noise and a noise-seed selector, and the tooltip's best fit L* follows the
    chosen draw (each draw is its own dataset)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 3, (30, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 1
    (tmp_path / "own.csv").write_text(
        "a,b,c,y\n"
        + "".join(f"{a:.6f},{b:.6f},{c:.6f},{t:.6f}\n" for (a, b, c), t in zip(x, y, strict=True))
    )
    out = tmp_path / "map"
    proc = subprocess.run(
        [sys.executable, "-m", "src.stability_map", "--quiet", "--validate", "0",
         "--data", str(tmp_path / "own.csv"), "--noise", "0,2", "--noise-seed", "0,1",
         "--optimizers", "sgd,adam", "--lr", "1e-3:1:7", "--n", "5:30", "--epochs", "40",
         "--focus", "sgd:0.01:30", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with opened(out / "index.html") as page:
        body = page.locator("body").inner_text()
        assert "own.csv" in body and "d = 3" in body
        assert page.locator("#select-noise").count() == 1
        assert page.locator("#select-noise_seed").count() == 1
        canvas = page.locator("#maps canvas").nth(0)
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        spot = (box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.8)

        def tip() -> str:
            page.mouse.move(*spot)
            return page.locator("#tip").inner_text()

        def best_fit() -> float:  # the CSV's 6 decimals leave a rounding-level L* at noise 0
            found = re.search(r"best fit L\*: (\S+)", tip())
            return float(found.group(1)) if found else 0.0

        page.select_option("#select-noise", "0")
        assert best_fit() < 1e-6 and "prediction at the mean input row" in tip()
        page.select_option("#select-noise", "1")
        first = best_fit()
        page.select_option("#select-noise_seed", "1")
        second = best_fit()
        assert first > 0.1 and second > 0.1 and first != second
