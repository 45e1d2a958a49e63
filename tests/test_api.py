"""The README's Python example runs as written, and the API round-trips a map."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]


def readme_example(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"README has no example {name!r}"
    return match[1]


@pytest.mark.slow  # a whole map with its report
def test_readme_api_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example("api"), "README.md", "exec"), scope)
    ds, again, page = scope["ds"], scope["again"], scope["page"]
    xr.testing.assert_identical(ds, again)
    assert page == Path("reports/example/index.html") and page.exists()
    assert (tmp_path / "reports/example/heatmap_sgd.png").exists()
    sgd = scope["sgd"]
    assert [int(n) for n in sgd.n[sgd >= 2]] == list(range(17, 22))  # diverging or overflow
    assert float(ds.critical_lr.sel(optimizer="sgd", n=20).squeeze()) == pytest.approx(
        0.0069315, rel=5e-3
    )


def test_load_reports_a_missing_map(tmp_path: Path) -> None:
    from src.stability_map import load

    with pytest.raises(ValueError, match="no stability map"):
        load(tmp_path)
