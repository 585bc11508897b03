"""The reports committed under ``docs/`` are what the current code writes from their own recorded numbers: a change
to a report's wording, tables or verdict rules fails here until the reports are written again."""

import json
from pathlib import Path

import pytest

from bcos_zoo.zoo import guidance_report, reproduction_report


DOCS = Path(__file__).resolve().parents[1] / "docs"
REPORTS = [
    ("reproduction", "reproduction.json", "reproduction.md", reproduction_report.markdown),
    ("reproduction_cnn", "reproduction.json", "reproduction.md", reproduction_report.markdown),
    ("guidance", "guidance.json", "report.md", guidance_report.markdown),
    ("guidance_full", "guidance.json", "report.md", guidance_report.markdown),
]


@pytest.mark.parametrize(("folder", "numbers", "report", "markdown"), REPORTS, ids=[row[0] for row in REPORTS])
def test_a_committed_report_is_what_the_current_code_writes_from_its_numbers(folder, numbers, report, markdown):
    recorded = json.loads((DOCS / folder / numbers).read_text())
    assert markdown(recorded) == (DOCS / folder / report).read_text()


@pytest.mark.parametrize("folder", [row[0] for row in REPORTS])
def test_a_committed_report_links_only_figures_that_are_committed_beside_it(folder):
    text = next((DOCS / folder).glob("*.md")).read_text()
    figures = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert figures and all((DOCS / folder / name).is_file() for name in figures), figures
