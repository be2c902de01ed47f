"""The README tells the truth about the code: its config table is the dataclass's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_the_seed_example_in_the_readme_trains(tmp_path, monkeypatch):
    """The README's block with the earlier script's names, run as written (on fewer examples)."""
    block = re.search(r"<!-- seed-example -->\n```python\n(.*?)```\n<!-- /seed-example -->", README.read_text(), re.DOTALL)
    assert block, "README lacks the seed example"
    code = block.group(1)
    assert "cfg = get_experiment_cfg()" in code and 'sae = sae_classes[cfg["sae_type"]](cfg)' in code
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    namespace: dict = {}
    exec(code.replace("get_experiment_cfg()", "get_experiment_cfg(num_examples=3000, checkpoint_freq=0)"), namespace)
    result = namespace["result"]
    assert type(namespace["sae"]).__name__ == "BatchTopKSAE" and result.examples == 3000
    assert result.metrics["fvu"] < 1 and (result.run_dir / "sae_weights.safetensors").is_file()
