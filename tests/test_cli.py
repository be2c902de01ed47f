"""The command line, run as a user would: a real process, real files, one JSON line at the end."""

from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys

from helpers import write_jsonl


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "sentence_sae", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


@pytest.mark.slow
def test_train_prints_a_json_summary_as_its_last_line(tmp_path, jsonl_file):
    config = tmp_path / "cfg.yaml"
    config.write_text("sae_type: topk\ndict_size: 128\ntop_k: 8\nnum_eval_examples: 10\n")
    proc = run_cli("train", "--config", str(config), "--dataset_path", str(jsonl_file), "--num_epochs", "2",
                   "--num_examples", "none", "--batch_size", "16", "--model_batch_size", "16",
                   "--output_dir", str(tmp_path / "runs"), "--top_k", "4")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary) == {"run_dir", "fvu", "train_fvu", "val_fvu", "l0", "val_l0", "dead_frac", "silent_frac_heldout",
                            "heldout_texts", "cos", "examples", "skipped_texts", "seconds"}
    # dead: not fired in the training window (nothing is, 90 examples < the 20,000 window); silent: on 10 texts
    assert summary["dead_frac"] == 0 and summary["heldout_texts"] == 10 and 0 < summary["silent_frac_heldout"] < 1
    assert summary["examples"] == 90 and summary["l0"] <= 4  # the option overrides the file's top_k
    assert summary["train_fvu"] < summary["val_fvu"]  # 2 passes over 45 texts: they are already memorized
    cfg = json.loads((tmp_path / "runs").joinpath(os.path.basename(summary["run_dir"]), "cfg.json").read_text())
    assert cfg["d_sae"] == 128 and cfg["k"] == 4
    resolved = cfg["sentence_sae"]["config"]  # what the recipe derived is saved with the SAE
    assert resolved["batch_size"] == 16 and resolved["num_val_examples"] == 5 and resolved["lr"] == 3e-3
    assert resolved["lr_warmup_steps"] == 1  # 5% of 6 steps
    assert "Training stopped: dataset exhausted after 2 pass(es)" in proc.stderr


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.slow
def test_mistyped_option_names_the_nearest_key():
    line = one_error_line(run_cli("train", "--dict_szie", "10"))
    assert "unknown config key 'dict_szie'; did you mean 'dict_size'?" in line


@pytest.mark.slow
def test_bad_values_give_one_clear_line(tmp_path):
    assert "valid types: batchtopk, gated, jumprelu, matryoshka, topk, vanilla" in one_error_line(run_cli("train", "--sae_type", "topp"))
    assert "'top_k' needs an int" in one_error_line(run_cli("train", "--top_k", "many"))
    assert "top_k (5000) must not exceed dict_size" in one_error_line(run_cli("train", "--top_k", "5000"))


@pytest.mark.slow
def test_wrong_column_gives_one_line_and_writes_nothing(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"sentence": "a text"}, {"sentence": "another text"}])
    out = tmp_path / "runs"
    line = one_error_line(run_cli("train", "--dataset_path", str(path), "--output_dir", str(out)))
    assert "column 'text' not found" in line and "columns present: sentence" in line
    assert not out.exists()


@pytest.mark.slow
def test_help_lists_every_config_key_with_its_docstring():
    proc = run_cli("train", "--help")
    assert proc.returncode == 0
    assert "--dead_feature_window" in proc.stdout and "counts as dead" in proc.stdout
    # grouped by the config's sections, each key under its own
    from sentence_sae.config import sections

    starts = [proc.stdout.index(f"\n{title} (config keys") for title in sections()]
    assert starts == sorted(starts)
    for (title, keys), start, end in zip(sections().items(), starts, starts[1:] + [len(proc.stdout)]):
        assert all(f"--{key} " in proc.stdout[start:end] for key in keys), title
    assert "--dtype {float32,float64,bfloat16,float16}" in proc.stdout and "--matryoshka_widths INT,..." in proc.stdout


@pytest.mark.slow
def test_unknown_prompt_name_is_one_line_naming_the_models_prompts(tmp_path, jsonl_file):
    proc = run_cli("embed", "--dataset_path", str(jsonl_file), "--prompt_name", "passage", "--cache_dir",
                   str(tmp_path / "cache"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "the model has no prompt named 'passage' (it has document, query)" in proc.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing was written
