"""Many SAEs from one stream: a grid trained on the same batches, texts encoded once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import make_cfg

from sentence_sae import sweep
from sentence_sae.errors import ConfigError
from sentence_sae.sweep import grid_configs, parse_grid


class TransformerForwards:
    """Counts forward passes of every module of one class (a model's transformer), through PyTorch's
    global forward hook."""

    def __init__(self, module_class: type):
        self.calls, self.module_class = 0, module_class

    def _hook(self, module, *_):
        self.calls += isinstance(module, self.module_class)

    def __enter__(self):
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_sweep_trains_every_grid_point_from_one_pass_of_encoding(tmp_path, model, jsonl_file):
    cfg = make_cfg(tmp_path, model, dataset_path=str(jsonl_file), use_cache=False, dict_size=128,
                   model_batch_size=8, num_batches_in_buffer=4, batch_size=8, num_eval_examples=10,
                   num_epochs=1, num_examples=None)
    from sentence_sae import train

    # forwards of any loaded copy of the model: the per-process cache of loaded models may have let
    # the fixture's go, and then train and sweep each load their own
    with TransformerForwards(type(model[0])) as single:
        train(cfg.replace(top_k=8))
    with TransformerForwards(type(model[0])) as many:
        results = sweep(cfg, {"top_k": [4, 8], "sae_type": ["topk", "batchtopk"]})
    assert many.calls == single.calls > 0  # four SAEs, one encoding of the corpus
    assert len(results) == 4 and len({r.run_dir for r in results}) == 4
    assert all(r.examples == 45 for r in results)  # 60 texts less 10 held out and 5 for validation
    names = sorted(r.run_dir.name.rsplit("-", 2)[0] for r in results)
    assert names[0].startswith("batchtopk_all-MiniLM-L6-v2_128_k4-top_k4-sae_typebatchtopk")
    for result in results:
        assert (result.run_dir / "sae_weights.safetensors").exists()
        assert (result.run_dir / "metrics.jsonl").read_text().count("\n") == result.steps + 1
    l0 = {(r.run_dir.name.split("-top_k")[1][:1]): r.metrics["l0"] for r in results if "sae_typetopk" in r.run_dir.name}
    assert l0["4"] <= 4 < l0["8"] <= 8


def test_grid_rejects_stream_keys_and_unknown_keys(tmp_path, model):
    cfg = make_cfg(tmp_path, model)
    with pytest.raises(ConfigError, match="'batch_size' shapes the shared stream"):
        grid_configs(cfg, {"batch_size": [64, 128]})
    with pytest.raises(ConfigError, match="did you mean 'top_k'"):
        grid_configs(cfg, {"topk": [1, 2]})
    with pytest.raises(ConfigError, match="key=value1,value2"):
        parse_grid(["top_k"])
    assert parse_grid(["top_k=16,32", "lr=1e-3"]) == {"top_k": [16, 32], "lr": [1e-3]}


def test_a_sweeps_name_prefixes_every_grid_point(tmp_path, model):
    unnamed = [c.name for c in grid_configs(make_cfg(tmp_path, model), {"top_k": [8, 16]})]
    assert unnamed == ["batchtopk_all-MiniLM-L6-v2_1536_k8-top_k8", "batchtopk_all-MiniLM-L6-v2_1536_k16-top_k16"]
    named = [c.name for c in grid_configs(make_cfg(tmp_path, model, name="mine"), {"top_k": [8, 16]})]
    assert named == ["mine-top_k8", "mine-top_k16"]


@pytest.mark.slow
def test_sweep_command_prints_one_summary_line_per_sae(tmp_path, jsonl_file):
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sentence_sae", "sweep", "--grid", "top_k=4,8", "--dataset_path", str(jsonl_file),
         "--dict_size", "64", "--num_eval_examples", "10", "--num_examples", "100", "--batch_size", "16",
         "--output_dir", str(tmp_path / "runs")],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert len(lines) == 2 and all(line["examples"] == 100 for line in lines)
