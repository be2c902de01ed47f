"""The README and docs/ tell the truth about the code: the config table is the dataclass's, the
set-up commands are what CI runs, the seed's example trains, every page and benchmark named exists,
and the front page and the results stay short enough to read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sentence_sae.config import config_table_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def test_config_page_table_matches_the_config_dataclass():
    text = (DOCS / "configuration.md").read_text()
    match = re.search(r"<!-- config-table[^>]*-->\n(.*?)<!-- /config-table -->", text, re.DOTALL)
    assert match, "docs/configuration.md lacks the config-table markers"
    assert match.group(1).strip() == config_table_markdown().strip(), (
        "docs/configuration.md's config table is stale; regenerate it with `sentence-sae keys`"
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


def test_the_front_page_and_the_results_stay_short():
    assert len(README.read_text().splitlines()) <= 250, "README.md is a front page: move reference to docs/"
    assert len(RESULTS.read_text().splitlines()) <= 380, "RESULTS.md holds current figures only: history is in git"


def test_every_page_the_readme_links_exists_and_is_in_the_site():
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", README.read_text()))
    pages = {page.name for page in DOCS.glob("*.md")} - {"index.md"}
    assert linked == pages, f"README links {sorted(linked)}, docs/ holds {sorted(pages)}"
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [page for page in sorted(pages | {"index.md"}) if f": {page}" not in nav]
    assert not missing, f"mkdocs.yml's nav lacks {missing}"


def test_the_project_speaks_of_itself_only():
    """No file a reader sees dates its text by work periods; history lives in git."""
    files = [README, RESULTS, *(ROOT / "benchmarks").rglob("README.md"), *DOCS.glob("*.md"),
             *(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "src").rglob("*.py")]
    found = [f"{path.relative_to(ROOT)}:{number}" for path in files
             for number, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"\bsessions?\b", line, re.I)]
    assert not found, f"'session' in {found}"


def test_every_benchmark_runs_as_a_module_and_the_readme_names_only_those():
    scripts = sorted(path for path in (ROOT / "benchmarks").rglob("*.py") if path.name not in {"__init__.py"})
    modules = [".".join(path.relative_to(ROOT).with_suffix("").parts) for path in scripts]
    edits = [path.name for path in scripts if "sys.path" in path.read_text()]
    assert not edits, f"{edits} edit sys.path: import the shared helpers from benchmarks.common"
    pages = [README, RESULTS, *DOCS.glob("*.md"), *(ROOT / "benchmarks").rglob("README.md")]
    named = {name for page in pages for name in re.findall(r"python -m (benchmarks(?:\.[a-z][a-z_0-9]*)+)", page.read_text())}
    assert named <= set(modules), f"commands for missing scripts: {sorted(named - set(modules))}"
    table = (ROOT / "benchmarks" / "README.md").read_text()
    unlisted = [module for module in modules if module != "benchmarks.common" and f"`python -m {module}" not in table]
    assert not unlisted, f"benchmarks/README.md does not list {unlisted}"
    code = "import importlib\n" + "".join(f"importlib.import_module({module!r})\n" for module in modules)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
