"""The documentation site: it builds with no warning, its examples run, and the tables that
restate the code or the committed benchmark report agree with them.

The build test needs the ``docs`` extra (``pip install -e ".[docs]"``) and is skipped
without it; the other tests need only torch.
"""
from __future__ import annotations

import html
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lrfree
from lrfree import registry

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OPTIMIZERS = DOCS / "optimizers"
REPORT = ROOT / "benchmarks" / "results" / "quick" / "report.md"

PAGE_CLASSES = {
    "psdasgd.md": lrfree.PSDASGD,
    "pssps.md": lrfree.PSSPS,
    "sps.md": lrfree.SPS,
    "dadaptsgd.md": lrfree.DAdaptSGD,
    "psdog.md": lrfree.PSDoG,
}
EXAMPLE_PAGES = [DOCS / "index.md", *sorted(OPTIMIZERS.glob("*.md"))]
CODE_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


# --- Markdown helpers ---------------------------------------------------------------------

def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _plain(cell: str) -> str:
    """A cell without the code span around it (``\\`lr\\``` -> ``lr``)."""
    return cell[1:-1] if len(cell) >= 2 and cell[0] == cell[-1] == "`" else cell


def tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every Markdown table as (the heading above it, header cells, body rows)."""
    found, heading, lines = [], "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: "):
            header, rows = _cells(line), []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            found.append((heading, header, rows))
            continue
        i += 1
    return found


def page_table(path: Path, first_column: str, heading: str | None = None):
    """The first table of ``path`` whose header starts with ``first_column`` (optionally
    under ``heading``), as (header, rows)."""
    for head, header, rows in tables(path.read_text(encoding="utf-8")):
        if header[0] == first_column and (heading is None or head == heading):
            return header, rows
    raise AssertionError(f"{path.name}: no table starting with {first_column!r}")


def code_blocks(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in CODE_BLOCK.finditer(text)]


# --- the site builds ----------------------------------------------------------------------

def test_site_builds_strictly_with_report_and_plots(tmp_path):
    """``mkdocs build --strict`` succeeds with not one warning (a broken link, a page
    missing from the nav, a docstring griffe cannot parse), and the committed benchmark
    report is in the site with every plot it shows."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason='needs the docs extra: pip install -e ".[docs]"')
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    problems = [line for line in output.splitlines()
                if re.match(r"\s*(\x1b\[[0-9;]*m)*(WARNING|ERROR)\b", line)]
    assert not problems, output

    report = site / "results" / "quick" / "report" / "index.html"
    assert report.is_file()
    images = re.findall(r'<img[^>]*src="([^"]+)"', report.read_text(encoding="utf-8"))
    plots = sorted(p.name for p in (REPORT.parent / "plots").glob("*.png"))
    assert sorted(Path(src).name for src in images) == plots
    for src in images:
        assert (report.parent / src).resolve().is_file(), src
    assert not (site / "hooks.py").exists()
    assert not external_resources(site)
    formulas = _katex_failures(site)
    assert formulas is None or formulas == [], formulas


# A tag attribute or CSS reference that makes the browser fetch something; a plain
# hyperlink (<a href>) is navigation, not a resource.
RESOURCE = re.compile(r'<(?:script|img|iframe|source|audio|video|embed)\b[^>]*\ssrc="([^"]*)"'
                      r'|<link\b[^>]*\shref="([^"]*)"', re.IGNORECASE)
CSS_URL = re.compile(r'url\(\s*[\'"]?([^\'")]+)|@import\s+[\'"]([^\'"]+)')


def _remote(url: str) -> bool:
    return bool(re.match(r"(?:[a-z][a-z0-9+.-]*:)?//", url, re.IGNORECASE)) and \
        not url.lower().startswith("data:")


def external_resources(site: Path) -> list[str]:
    """Every resource a page of the built site would load from another host: scripts,
    stylesheets, images, fonts (also through CSS). The site must work with no network."""
    found = []
    for path in sorted(site.rglob("*")):
        if path.suffix == ".html":
            text = path.read_text(encoding="utf-8")
            urls = [a or b for a, b in RESOURCE.findall(text)]
        elif path.suffix == ".css":
            text = path.read_text(encoding="utf-8")
            urls = [a or b for a, b in CSS_URL.findall(text)]
        else:
            continue
        found += [f"{path.relative_to(site)}: {u}" for u in urls if _remote(u)]
    return found


def test_external_resources_finds_a_cdn_script(tmp_path):
    """The check above can fail: a page loading math from a CDN is caught."""
    (tmp_path / "index.html").write_text(
        '<a href="https://arxiv.org/abs/2401.03240">paper</a>'
        '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'
        '<script src="assets/katex/katex.min.js"></script>')
    (tmp_path / "a.css").write_text('@font-face{src:url(//fonts.example.org/x.woff2)}'
                                    '.b{background:url(data:image/png;base64,AAAA)}')
    assert external_resources(tmp_path) == [
        "a.css: //fonts.example.org/x.woff2",
        "index.html: https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"]


def _katex_failures(site: Path) -> list[str] | None:
    """Formulas of the built site that the bundled KaTeX cannot typeset (None: no node
    to run it with)."""
    node = shutil.which("node")
    if node is None:
        return None
    formulas = []
    for page in sorted(site.rglob("*.html")):
        for match in re.finditer(r'<(span|div) class="arithmatex">(.*?)</\1>',
                                 page.read_text(encoding="utf-8"), re.DOTALL):
            formulas.append(html.unescape(re.sub(r"<[^>]+>", "", match.group(2))).strip())
    assert len(formulas) > 50, "the pages' formulas were not found"
    script = (
        "const katex = require(process.argv[1]); const bad = [];"
        "for (const tex of JSON.parse(require('fs').readFileSync(0, 'utf8'))) {"
        "  try { katex.renderToString(tex.slice(2, -2), {throwOnError: true}); }"
        "  catch (e) { bad.push(tex + ' : ' + e.message); } }"
        "console.log(JSON.stringify(bad));")
    done = subprocess.run([node, "-e", script, str(DOCS / "assets" / "katex" / "katex.min.js")],
                          input=json.dumps(formulas), capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


# --- the examples run ---------------------------------------------------------------------

EXAMPLES = [pytest.param(source, id=f"{page.name}:{line}")
            for page in EXAMPLE_PAGES for line, source in code_blocks(page)]


def test_every_page_with_examples_has_one():
    pages = {p.name for p in EXAMPLE_PAGES}
    with_code = {p.name for p in EXAMPLE_PAGES if code_blocks(p)}
    assert with_code == pages


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("source", EXAMPLES)
def test_example_runs(source, capsys):
    """Every ```python block of the home page and the optimizer pages runs as written,
    on its own, without a warning, and leaves its models' parameters finite."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the examples are tiny: more threads only contend
    try:
        namespace: dict = {"__name__": "__docs_example__"}
        exec(compile(source, "<docs example>", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    models = [v for v in namespace.values() if isinstance(v, torch.nn.Module)]
    for model in models:
        for p in model.parameters():
            assert torch.isfinite(p).all()
    capsys.readouterr()


# --- the defaults tables match the signatures ---------------------------------------------

@pytest.mark.parametrize("page", sorted(PAGE_CLASSES))
def test_defaults_table_matches_signature(page):
    """The "Defaults" table of each optimizer page lists every constructor argument but
    ``params``, in signature order, with the default the code declares."""
    cls = PAGE_CLASSES[page]
    header, rows = page_table(OPTIMIZERS / page, "argument", heading="Defaults")
    assert header[:2] == ["argument", "default"]
    documented = {}
    for row in rows:
        name, default = _plain(row[0]), _plain(row[1])
        documented[name] = eval(default, {"__builtins__": {}, "float": float})
    signature = {name: p.default for name, p in inspect.signature(cls).parameters.items()
                 if name != "params"}
    assert list(documented) == list(signature)
    for name, default in signature.items():
        assert documented[name] == default and type(documented[name]) is type(default), name


# --- the registry and composition tables match the code -----------------------------------

def test_registry_table_matches_available():
    _, rows = page_table(OPTIMIZERS / "compose.md", "name")
    names = [_plain(row[0]) for row in rows]
    assert sorted(names) == sorted(lrfree.available())
    assert len(names) == len(set(names))
    param = torch.nn.Parameter(torch.zeros(2))
    for row in rows:
        documented = re.search(r"`(\w+)`", row[1]).group(1)
        assert type(lrfree.create(_plain(row[0]), [param])).__name__ == documented


def test_composition_tables_match_rules_and_scalings():
    _, rules = page_table(OPTIMIZERS / "compose.md", "`rule`")
    documented = {re.search(r'"(\w+)"', row[0]).group(1): re.search(r"`(\w+)`", row[1]).group(1)
                  for row in rules}
    assert documented == {name: cls.__name__ for name, cls in registry.RULES.items()}
    _, scalings = page_table(OPTIMIZERS / "compose.md", "`scaling`")
    assert [re.search(r'"(\w+)"', row[0]).group(1) for row in scalings] == list(lrfree.SCALINGS)


# --- the benchmark standing matches the committed report ----------------------------------

def report_rows() -> dict[tuple[str, str], dict[str, str]]:
    """(task, optimizer) -> {column: cell} from the per-task tables of the report."""
    rows = {}
    for heading, header, body in tables(REPORT.read_text(encoding="utf-8")):
        if header[0] != "optimizer":
            continue
        task = heading.split(" — ")[0]
        for row in body:
            rows[(task, row[0])] = dict(zip(header, row))
    return rows


@pytest.mark.parametrize("page", sorted(PAGE_CLASSES))
def test_benchmark_standing_matches_report(page):
    """Every number in an optimizer page's standing table is the report's, cell for cell,
    so the page cannot cite a number the committed results do not contain."""
    header, rows = page_table(OPTIMIZERS / page, "task")
    report = report_rows()
    assert rows
    for row in rows:
        cells = dict(zip(header, (_plain(c) for c in row)))
        key = (cells.pop("task"), cells.pop("optimizer"))
        assert key in report, key
        for column, value in cells.items():
            assert report[key][column] == value, (key, column)


def test_api_reference_rewrites_rest_in_docstrings():
    """The griffe extension behind the API page turns the docstrings' reST into the
    Markdown the site renders (a formula left as reST shows raw, with ``_`` as emphasis)."""
    pytest.importorskip("griffe", reason='needs the docs extra: pip install -e ".[docs]"')
    sys.path.insert(0, str(DOCS))
    try:
        from griffe_rst import rst_to_markdown
    finally:
        sys.path.remove(str(DOCS))
    text = ("With :math:`g'_k` and :class:`lrfree.PSDASGD`:\n\n    .. math::\n"
            "        a_k = b,\n\n        c_{k-1} = d\n\n    Example::\n\n        opt.step()\n")
    assert rst_to_markdown(text) == (
        "With $g'_k$ and `lrfree.PSDASGD`:\n\n    $$\n    a_k = b,\n    $$\n\n"
        "    $$\n    c_{k-1} = d\n    $$\n\n    Example:\n\n        opt.step()")
