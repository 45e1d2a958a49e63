"""Take the README's screenshots of a report in headless Chromium (playwright).

``python -m tools.screenshots REPORT_DIR [DOCS_DIR]`` writes ``report.png`` (the focus panel)
and ``report_maps.png`` (the maps, with the sgd cell nearest lr 0.0075, N 21 pinned: its loss
curve below them) into ``DOCS_DIR`` (default ``docs``). Rerun it on the default job's report
whenever what the page shows changes, so that the pictures are of the final code.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright import sync_api

WIDTH = 1100
PINNED = ("sgd", 0.0075, 21)
"""The cell pinned in the maps' picture: just above sgd's critical lr at N = 21."""


def take(report: Path, docs: Path) -> None:
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": WIDTH, "height": 3000})  # no scrolling
        page.goto((report / "index.html").resolve().as_uri())
        page.locator("#focus").screenshot(path=docs / "report.png")

        name, lr, n = PINNED
        canvas = page.locator("#maps canvas").first
        # The inverse of the page's cellAt: the canvas point of the cell's centre.
        point = page.evaluate(
            """([c, lr, n]) => {
              const g = geom(c), i = D.lr.reduce((b, v, k) =>
                Math.abs(Math.log(v / lr)) < Math.abs(Math.log(D.lr[b] / lr)) ? k : b, 0);
              const j = D.n.indexOf(n);
              return [M.l + (i + 0.5 - view.x0) / (view.x1 - view.x0) * g.pw,
                      M.t + g.ph - (j + 0.5 - view.y0) / (view.y1 - view.y0) * g.ph];
            }""",
            [canvas.element_handle(), lr, n],
        )
        canvas.click(position={"x": point[0], "y": point[1]})
        top = page.locator("#controls").bounding_box()
        bottom = page.locator("#pinned").bounding_box()
        assert top is not None and bottom is not None
        page.screenshot(
            path=docs / "report_maps.png",
            clip={"x": 0, "y": top["y"] - 10, "width": WIDTH,
                  "height": bottom["y"] + bottom["height"] - top["y"] + 20},
        )  # fmt: skip
        title = page.locator("#curve-title").inner_text()
        assert title.startswith(f"{name}, "), title  # the first map is the pinned optimizer's
        print(title)
        browser.close()


if __name__ == "__main__":
    take(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "docs"))
