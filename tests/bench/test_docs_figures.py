"""The benchmark figures the README and the docs quote are the committed results', and the
committed reports are what the report code makes of the committed records."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lrfree.bench.report import render_report

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import docs_figures  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))


def test_every_marked_figure_and_standing_table_matches_the_results() -> None:
    """Run `python benchmarks/docs_figures.py` to rewrite them after the results change."""
    assert docs_figures.sync(write=False) == []


def test_the_pages_mark_their_figures() -> None:
    counts = {page.relative_to(ROOT).as_posix():
              len(docs_figures.MARK.findall(page.read_text(encoding="utf-8")))
              for page in docs_figures.PAGES}
    assert counts["README.md"] >= 30 and counts["docs/index.md"] >= 10
    assert counts["docs/optimizers/psdasgd.md"] >= 3 and counts["docs/optimizers/pssps.md"] >= 3


def test_a_wrong_figure_is_caught(tmp_path) -> None:
    page = tmp_path / "page.md"
    right = docs_figures.value("quick:rank:prodigy")
    page.write_text(f"Prodigy <!--fig:quick:rank:prodigy-->{right}<!--/fig--> and "
                    "PS-SPS <!--fig:quick:rank:pssps-->1.00<!--/fig-->.\n")
    differences = docs_figures.sync(write=False, pages=[page])
    assert len(differences) == 1 and "quick:rank:pssps is 1.00" in differences[0]
    docs_figures.sync(write=True, pages=[page])
    assert docs_figures.sync(write=False, pages=[page]) == []


@pytest.mark.parametrize("budget", ["quick", "full", "main"])
def test_committed_report_is_regenerated_from_the_records(budget: str) -> None:
    """`python -m lrfree.bench --report-only --out benchmarks/results/<budget>` rewrites it."""
    out = ROOT / "benchmarks" / "results" / budget
    if not out.is_dir():
        pytest.skip(f"{out} not committed")
    assert (out / "report.md").read_text() == render_report(out)
