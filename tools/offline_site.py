"""Make the site of ``asv publish`` work offline: ``python -m tools.offline_site``.

asv's page loads jQuery, flot, bootstrap and two small helpers from CDNs and shows only an
"external dependencies failed" notice without them. This fetches the same versions from the npm
registry (``npm pack``), stores them under ``.asv/html/vendor/`` and points the page at them.
stupidtable 1.0.1, the table sorter, is not on npm (only 1.1.3 is, as ``stupid-table-plugin``):
:data:`STUPIDTABLE` stands in for it. Run it after ``asv publish``; ``asv preview`` then shows
every page, sortable tables included, with no internet access.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HTML = Path(__file__).resolve().parents[1] / ".asv" / "html"
# What asv's summary list and regressions pages use of stupidtable: $(table).stupidtable(fns)
# (custom compare functions by data-sort type), a click on a header or $(th).stupidsort(dir)
# sorts the tbody's rows by that column (a cell's data-sort-value, else its text; stable, and
# reversed for "desc"), and "aftertablesort" tells {column, direction, $th}.
STUPIDTABLE = """(function ($) {
  var dir = {ASC: "asc", DESC: "desc"};
  var fns = {
    "int": function (a, b) { return parseInt(a, 10) - parseInt(b, 10); },
    "float": function (a, b) { return parseFloat(a) - parseFloat(b); },
    "string": function (a, b) { return String(a).localeCompare(String(b)); },
    "string-ins": function (a, b) {
      return String(a).toLowerCase().localeCompare(String(b).toLowerCase());
    }
  };
  $.fn.stupidtable = function (sortFns) {
    return this.each(function () {
      var $table = $(this);
      $table.data("sortFns", $.extend({}, fns, sortFns));
      $table.on("click.stupidtable", "thead th", function () { $(this).stupidsort(); });
      $table.find("th[data-sort-onload=yes]").eq(0).stupidsort();
    });
  };
  $.fn.stupidtable.dir = dir;
  $.fn.stupidtable.default_sort_fns = fns;
  $.fn.stupidsort = function (force) {
    var $th = this.eq(0), $table = $th.closest("table");
    var compare = ($table.data("sortFns") || fns)[$th.data("sort")];
    if (!compare) { return this; }
    var column = 0;
    $th.prevAll("th").each(function () { column += parseInt($(this).attr("colspan") || 1, 10); });
    var last = $th.data("sort-dir");
    var direction = force || (last ? (last === dir.ASC ? dir.DESC : dir.ASC)
                                   : $th.data("sort-default") || dir.ASC);
    var info = {column: column, direction: direction, $th: $th};
    $table.trigger("beforetablesort", info);
    var rows = $table.children("tbody").children("tr").map(function (index) {
      var $td = $(this).children("td").eq(column), value = $td.data("sort-value");
      return {tr: this, index: index, value: value === undefined ? $td.text() : value};
    }).get();
    rows.sort(function (a, b) { return compare(a.value, b.value) || a.index - b.index; });
    if (direction !== dir.ASC) { rows.reverse(); }
    $table.children("tbody").append($.map(rows, function (row) { return row.tr; }));
    $table.find("th").data("sort-dir", null).removeClass("sorting-asc sorting-desc");
    $th.data("sort-dir", direction).addClass("sorting-" + direction);
    $table.trigger("aftertablesort", info);
    return this;
  };
})(jQuery);
"""


def npm_source(url: str) -> tuple[str, str, str]:
    """The npm package, version and file inside it that a CDN address serves."""
    if m := re.fullmatch(r"https://code\.jquery\.com/jquery-([\d.]+)\.min\.js", url):
        return "jquery", m[1], "dist/jquery.min.js"
    if m := re.fullmatch(r"https://cdn\.jsdelivr\.net/npm/([\w.-]+)@([\d.]+)/(.+)", url):
        return m[1], m[2], m[3]
    if m := re.fullmatch(r"https://cdnjs\.cloudflare\.com/ajax/libs/([\w.-]+)/([\d.]+)/(.+)", url):
        # flot's npm package has no minified files: take the plain ones.
        return m[1], m[2], re.sub(r"\.min\.js$", ".js", m[3]) if m[1] == "flot" else m[3]
    raise ValueError(f"no npm source known for {url}")


def npm_file(package: str, version: str, path: str, cache: Path) -> bytes:
    """One file of an npm package, fetched once with ``npm pack``."""
    root = cache / f"{package}-{version}"
    if not root.exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                ["npm", "pack", f"{package}@{version}", "--pack-destination", tmp],
                check=True, capture_output=True,
            )  # fmt: skip
            (tarball,) = Path(tmp).glob("*.tgz")
            with tarfile.open(tarball) as tar:
                tar.extractall(tmp, filter="data")
            shutil.copytree(Path(tmp) / "package", root)
    return (root / path).read_bytes()


def localize(html_dir: Path = HTML) -> list[str]:
    """Rewrite ``index.html`` to vendored copies; returns the addresses it replaced."""
    page = html_dir / "index.html"
    text = page.read_text(encoding="utf-8")
    vendor = html_dir / "vendor"
    vendor.mkdir(exist_ok=True)
    cache = Path(tempfile.gettempdir()) / "stability-map-asv-vendor"
    cache.mkdir(exist_ok=True)
    replaced = []
    for tag in re.findall(r"<(?:script|link)\b[^>]*>", text):
        url = re.search(r'(?:src|href)="(https://[^"]+\.(?:js|css))"', tag)
        if not url:
            continue
        name = url[1].rsplit("/", 1)[-1]
        if "stupidtable" in url[1]:
            data = STUPIDTABLE.encode()
        else:
            data = npm_file(*npm_source(url[1]), cache)
        (vendor / name).write_bytes(data)
        local = re.sub(r'\s(?:integrity|crossorigin|referrerpolicy)="[^"]*"', "", tag)
        text = text.replace(tag, local.replace(url[1], f"vendor/{name}"))
        replaced.append(url[1])
    page.write_text(text, encoding="utf-8")
    return replaced


if __name__ == "__main__":
    if not (HTML / "index.html").exists():
        sys.exit("error: no .asv/html/index.html: run `asv publish` first")
    if shutil.which("npm") is None:
        sys.exit("error: npm is needed to fetch asv's JavaScript libraries")
    for url in localize():
        print(f"vendored {url}")
