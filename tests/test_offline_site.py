"""The asv site's CDN addresses map to the npm packages that hold the same files, and the site
that ``tools.offline_site`` makes offline works in headless Chromium, sortable tables included."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tools.offline_site import localize, npm_source


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://code.jquery.com/jquery-3.3.1.min.js", ("jquery", "3.3.1", "dist/jquery.min.js")),
        (
            "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js",
            ("flot", "0.8.3", "jquery.flot.time.js"),
        ),
        (
            "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css",
            ("bootstrap", "3.1.1", "dist/css/bootstrap.min.css"),
        ),
        (
            "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js",
            ("blueimp-md5", "2.19.0", "js/md5.min.js"),
        ),
    ],
)
def test_npm_source(url: str, expected: tuple[str, str, str]) -> None:
    assert npm_source(url) == expected


def test_unknown_cdn_is_an_error() -> None:
    with pytest.raises(ValueError, match="no npm source"):
        npm_source("https://example.invalid/lib.js")


# The site of `asv publish`, made offline, in headless Chromium: every page loads with no error
# and no request leaving the machine, and the sortable tables sort.
BENCH = """import os
import re
V = float(os.environ["TINY_VALUE"])
def track_a():
    return 3 * V
def track_b():
    return V * V
def track_c():
    return 2 * V**0.5
"""
CONF = {
    "version": 1, "project": "tiny", "project_url": "https://example.invalid/", "repo": ".",
    "branches": ["main"], "dvcs": "git", "environment_type": "existing",
    "benchmark_dir": "benchmarks", "results_dir": "results", "html_dir": "html",
    "build_command": [], "install_command": [], "uninstall_command": [],
}  # fmt: skip
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny project's published site, made offline by ``localize`` and served on localhost:
    three commits with track_a, track_b, track_c at 3, 1, 2, then 12, 16, 4 (regressions of
    4x, 16x and 2x at the last commit)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is needed to vendor asv's JavaScript libraries")
    root = tmp_path_factory.mktemp("asv")
    (root / "benchmarks").mkdir()
    (root / "benchmarks" / "__init__.py").touch()
    (root / "benchmarks" / "bench.py").write_text(BENCH)
    (root / "asv.conf.json").write_text(json.dumps(CONF))
    # HOME: asv's machine file and git's config stay in the temporary folder.
    env = {**os.environ, "HOME": str(root), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip

    def run(*cmd: str, **extra: str) -> str:
        proc = subprocess.run(cmd, cwd=root, env={**env, **extra}, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    run("git", "init", "-q", "-b", "main")
    run("git", "add", "-A")
    for message in ("one", "two", "three"):
        run("git", "commit", "-q", "--allow-empty", "-m", message)
    asv = (sys.executable, "-m", "asv")
    run(*asv, "machine", "--yes", "--machine", "tiny")
    commits = run("git", "rev-list", "--reverse", "main").split()
    for commit, value in zip(commits, ("1", "1", "4"), strict=True):
        run(*asv, "run", "--python=same", "--machine", "tiny", "--set-commit-hash", commit,
            TINY_VALUE=value)  # fmt: skip
    run(*asv, "publish")
    html = root / "html"
    assert localize(html)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=html))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.mark.slow  # asv and the browser
def test_every_page_of_the_offline_site_works(site: str) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium)")
    errors: list[str] = []
    outside: list[str] = []

    def local_only(route: Any) -> None:
        if route.request.url.startswith(site):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    def show(page: Any, hash_: str, ready: str) -> None:
        page.goto(f"{site}{hash_}")
        try:
            page.wait_for_selector(ready, state="visible", timeout=15_000)
        except sync_api.TimeoutError:
            pytest.fail(f"{hash_!r}: no {ready!r}; {errors} {page.locator('body').inner_text()}")
        page.wait_for_load_state("networkidle")
        assert "error.html" not in page.url, errors  # where a failed script sends the page
        text = page.locator("body").inner_text()
        assert "Loading..." not in text, (hash_, text[:500], errors)
        assert not errors and not outside, (hash_, errors, outside)

    def rows(table: str, *names: str, index: int = 1) -> None:
        """Column ``index`` (from 1) of the table reads ``names`` (regexes; a benchmark's
        "bench." may be left off) from the top down; ``expect`` waits for a sort to finish."""
        cells = page.locator(f"{table} tbody tr td:nth-child({index})")
        sync_api.expect(cells).to_have_text([re.compile(rf"^\s*(bench\.)?{n}\s*$") for n in names])

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route("**/*", local_only)

        show(page, "", "#summarygrid-display .benchmark-container")
        assert page.locator("#summarygrid-display .benchmark-container").count() == 3

        show(page, "#bench.track_b", "#main-graph canvas.flot-base")

        table = "#summarylist-body table"
        show(page, "#/summarylist", f"{table} tbody tr")
        rows(table, "track_a", "track_b", "track_c")  # by name at first
        page.click(f"{table} thead th:nth-child(2)")  # Value: 12, 16, 4
        rows(table, "track_c", "track_a", "track_b")
        sync_api.expect(page).to_have_url(re.compile(r"sort=1&dir=asc"))
        page.click(f"{table} thead th:nth-child(2)")
        rows(table, "track_b", "track_a", "track_c")
        sync_api.expect(page).to_have_url(re.compile(r"sort=1&dir=desc"))

        table = "#regressions-body table"
        show(page, "#/regressions", f"{table} tbody tr")
        rows(table, "track_b", "track_a", "track_c")  # by factor, largest first
        rows(table, r"16\.00x", r"4\.00x", r"2\.00x", index=4)
        page.click(f"{table} thead th:nth-child(1)")
        rows(table, "track_a", "track_b", "track_c")
        page.click(f"{table} thead th:nth-child(1)")
        rows(table, "track_c", "track_b", "track_a")
        browser.close()
    assert not errors and not outside, (errors, outside)
