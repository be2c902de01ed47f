"""The README tells the truth about the code: its config table is the dataclass's."""

from __future__ import annotations

import re
from pathlib import Path

from sentence_sae.config import config_table_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_table_matches_the_config_dataclass():
    text = README.read_text()
    match = re.search(r"<!-- config-table[^>]*-->\n(.*?)<!-- /config-table -->", text, re.DOTALL)
    assert match, "README lacks the config-table markers"
    assert match.group(1).strip() == config_table_markdown().strip(), (
        "README's config table is stale; regenerate it with `sentence-sae keys`"
    )


def test_readme_set_up_commands_are_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python3 -m pytest" in ci and "python3 -m pytest" in README.read_text()
