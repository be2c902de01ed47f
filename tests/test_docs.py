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
    """Each step of the README's test command (install with the test extra, run pytest) is a line of
    .ci/run, up to pip's -q."""
    setup = README.read_text().split("## Set-up", 1)[1].split("```", 2)[1]
    test_command = next(line for line in setup.splitlines() if "pytest" in line and not line.startswith("#"))
    ci_lines = {" ".join(line.replace(" -q ", " ").split()) for line in (README.parent / ".ci" / "run").read_text()
                .splitlines()}
    steps = [" ".join(step.split()) for step in test_command.split("&&")]
    assert len(steps) == 2 and "[test]" in steps[0], test_command
    missing = [step for step in steps if step not in ci_lines]
    assert not missing, f"README's test command steps not run by .ci/run: {missing}"


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
