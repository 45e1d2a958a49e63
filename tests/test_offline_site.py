"""The asv site's CDN addresses map to the npm packages that hold the same files."""

from __future__ import annotations

import pytest

from tools.offline_site import npm_source


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
