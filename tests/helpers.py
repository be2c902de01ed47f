"""Helpers for tests: configs that write under a temporary folder, data files and a PCA baseline."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

from sentence_sae.config import SAEConfig
from sentence_sae.finalize import post_init_cfg


def make_cfg(tmp_path: Path, model=None, **overrides) -> SAEConfig:
    """A finalized config that writes under tmp_path and logs nowhere unless asked; it encodes at fp32
    like the shared ``model`` fixture, so caches that tests fill from that model are the run's."""
    values = dict(output_dir=str(tmp_path / "runs"), wandb_mode="disabled", device="cpu", encode_backend="torch",
                  perf_log_freq=0, checkpoint_freq=0, cache_dir=str(tmp_path / "cache"))
    values.update(overrides)
    return post_init_cfg(SAEConfig().replace(**values), model)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pca_fvu(train: torch.Tensor, held_out: torch.Tensor, k: int) -> float:
    """Held-out FVU of the best k-dimensional linear code fitted on ``train`` (PCA)."""
    train, held_out = train.double(), held_out.double()
    mean = train.mean(0)
    _, _, v = torch.linalg.svd(train - mean, full_matrices=False)
    basis = v[:k]
    reconstruction = (held_out - mean) @ basis.T @ basis + mean
    variance = (held_out - held_out.mean(0)).pow(2).sum()
    return float((held_out - reconstruction).pow(2).sum() / variance)


def docs_with_topics() -> list[dict]:
    """The built-in corpus with its topic as a label, in the built-in corpus's order."""
    from sentence_sae.data import python_docs_rows

    return [{"text": text, "topic": topic} for text, topic in python_docs_rows()]


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``python -m sentence_sae ARGS`` in a real subprocess, without progress bars or W&B."""
    env = {**os.environ, "TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "sentence_sae", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=900)


def find_browser() -> tuple[str, str] | None:
    for browser in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(browser) and shutil.which("chromedriver"):
            return shutil.which(browser), shutil.which("chromedriver")
    return None


needs_chromium = pytest.mark.skipif(find_browser() is None, reason="headless Chromium and chromedriver are not "
                                    "installed (Debian: apt-get install chromium chromium-driver; .ci/run installs them)")


@contextlib.contextmanager
def headless_chrome(width: int = 1280, height: int = 1000) -> Iterator:
    """A real headless Chromium driven by selenium."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    browser, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
