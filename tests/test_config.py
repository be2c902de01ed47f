"""The typed config: defaults, derived values, validation messages, files and the dict interface."""

from __future__ import annotations

import json

import pytest

from sentence_sae import SAEConfig, get_default_cfg, post_init_cfg
from sentence_sae.config import choices_of, from_mapping, load_config_file, sections
from sentence_sae.errors import ConfigError


def test_wandb_mode_follows_the_login(model, tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert post_init_cfg(get_default_cfg(), model).wandb_mode == "offline"  # not logged in
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert post_init_cfg(get_default_cfg(), model).wandb_mode == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert post_init_cfg(get_default_cfg(), model).wandb_mode == "disabled"
    assert post_init_cfg(get_default_cfg().replace(wandb_mode="offline"), model).wandb_mode == "offline"


def test_defaults_finalize_with_values_derived_from_the_model(model):
    cfg = post_init_cfg(get_default_cfg(), model)
    assert cfg.act_size == 384
    assert cfg.device == "cpu"
    assert cfg.name == "batchtopk_all-MiniLM-L6-v2_1536_k32"
    assert post_init_cfg(cfg, model) == cfg  # finalizing twice changes nothing


def test_sparsity_coefficient_starts_at_the_architectures_default_unless_set(model):
    from sentence_sae import create_sae

    vanilla = create_sae(post_init_cfg(SAEConfig(sae_type="vanilla"), model))
    jumprelu = create_sae(post_init_cfg(SAEConfig(sae_type="jumprelu"), model))
    assert vanilla.cfg.l1_coeff is None  # unset stays unset: the trainer steers it to target_l0
    assert vanilla.sparsity_coefficient > jumprelu.sparsity_coefficient > 0
    fixed = post_init_cfg(SAEConfig(sae_type="jumprelu", l1_coeff=0.5), model)
    assert fixed.l1_coeff == 0.5 and create_sae(fixed).sparsity_coefficient == 0.5


def test_dict_interface_of_the_earlier_script():
    cfg = get_default_cfg()
    cfg["top_k"] = 64
    assert cfg["top_k"] == 64 and cfg.top_k == 64
    assert "dict_size" in cfg and dict(cfg.items())["top_k"] == 64


@pytest.mark.parametrize("setter", ["item", "attribute", "mapping"])
def test_mistyped_key_names_the_nearest_valid_key(setter):
    cfg = get_default_cfg()
    with pytest.raises(ConfigError, match="unknown config key 'dict_szie'; did you mean 'dict_size'"):
        if setter == "item":
            cfg["dict_szie"] = 10
        elif setter == "attribute":
            cfg.dict_szie = 10
        else:
            from_mapping({"dict_szie": 10})


def test_unknown_sae_type_lists_the_valid_ones(model):
    with pytest.raises(ConfigError, match="unknown sae_type 'topp'; valid types: batchtopk, gated, jumprelu, matryoshka, topk, vanilla"):
        post_init_cfg(SAEConfig(sae_type="topp"), model)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"top_k": 100, "dict_size": 64}, r"top_k \(100\) must not exceed dict_size \(64\)"),
        ({"dict_size": 0}, "dict_size must be positive"),
        ({"batch_size": -1}, "batch_size must be positive"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"lr": -1e-3}, "lr must be positive"),
        ({"num_examples": 0}, "num_examples must be positive"),
        ({"num_epochs": 0}, "num_epochs must be positive"),
        ({"pre_act_coeff": -1e-5}, "pre_act_coeff must be 0 or more"),
        ({"wandb_mode": "sometimes"}, "wandb_mode 'sometimes' is not valid"),
        ({"batch_size": 4096}, "shuffle buffer .* is smaller than batch_size"),
        ({"device": "gpu"}, "device 'gpu' is not valid"),
        ({"top_k_warmup_factor": 0.5}, r"top_k_warmup_factor must be at least 1 \(1 turns the warm-up off\)"),
        ({"top_k_warmup_frac": 1.5}, r"top_k_warmup_frac must lie in \[0, 1\]"),
    ],
)
def test_invalid_values_are_rejected_with_the_fix(model, changes, message):
    with pytest.raises(ConfigError, match=message):
        post_init_cfg(SAEConfig(**changes), model)


def test_wrong_types_are_rejected():
    with pytest.raises(ConfigError, match="'dict_size' needs an int, got 'many'"):
        SAEConfig(dict_size="many")
    with pytest.raises(ConfigError, match="'top_k' needs an int, got 2.5"):
        get_default_cfg()["top_k"] = 2.5
    assert SAEConfig(dict_size="2048", lr="1e-3", input_unit_norm="true").dict_size == 2048


def test_explicit_act_size_that_contradicts_the_model_is_an_error(model):
    with pytest.raises(ConfigError, match="act_size is 768, but model .* gives 384-dimensional embeddings"):
        post_init_cfg(SAEConfig(act_size=768), model)
    assert post_init_cfg(SAEConfig(act_size=384), model).act_size == 384


def test_yaml_and_json_config_files(tmp_path):
    yaml_file = tmp_path / "cfg.yaml"
    yaml_file.write_text("sae_type: batchtopk\ntop_k: 16\nlr: 1e-3\n")
    json_file = tmp_path / "cfg.json"
    json_file.write_text(json.dumps({"dict_size": 512, "input_unit_norm": True}))
    assert from_mapping(load_config_file(yaml_file)).top_k == 16
    assert from_mapping(load_config_file(json_file)).input_unit_norm is True
    bad = tmp_path / "bad.yaml"
    bad.write_text("top_kk: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'top_k'"):
        from_mapping(load_config_file(bad))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json is not valid json"):
        load_config_file(broken)


def test_every_choice_is_checked_where_it_is_set_and_lists_the_valid_values():
    for key, bad in (("dtype", "float8"), ("b_dec_init", "median"), ("encode_backend", "onnx"), ("wandb_mode", "on")):
        with pytest.raises(ConfigError, match=f"{key} '{bad}' is not valid; use one of " + ", ".join(choices_of(key))):
            SAEConfig(**{key: bad})
    assert choices_of("encode_backend") == ("auto", "torch", "openvino", "fast", "bfloat16", "float16", "int8")
    assert choices_of("sae_type") == ()  # pluggable: checked against the registry when finalized


def test_matryoshka_widths_is_a_list_from_a_list_a_string_or_an_old_config_file(tmp_path):
    assert SAEConfig(matryoshka_widths=[96, 384, 1536]).matryoshka_widths == [96, 384, 1536]
    assert SAEConfig(matryoshka_widths="96, 384,1536").matryoshka_widths == [96, 384, 1536]  # command line, old cfg.json
    (tmp_path / "cfg.yaml").write_text("matryoshka_widths: [96, 384, 1536]\n")
    assert from_mapping(load_config_file(tmp_path / "cfg.yaml")).matryoshka_widths == [96, 384, 1536]
    with pytest.raises(ConfigError, match="'matryoshka_widths' needs an int, got 'big'"):
        SAEConfig(matryoshka_widths="96,big")
    with pytest.raises(ConfigError, match="'matryoshka_widths' needs a list of ints"):
        SAEConfig(matryoshka_widths={"a": 1})


def test_sections_hold_every_key_once_in_declaration_order():
    keys = [key for section in sections().values() for key in section]
    assert keys == list(SAEConfig().keys())
    assert list(sections()) == ["model and data", "SAE", "optimisation", "run and logging"]
    assert "top_k" in sections()["SAE"] and "lr" in sections()["optimisation"] and "seed" in sections()["run and logging"]


def test_a_config_file_may_group_keys_by_section(tmp_path):
    nested = tmp_path / "cfg.yaml"
    nested.write_text("model_and_data:\n  dataset_path: data.jsonl\nsae:\n  top_k: 16\noptimisation:\n  lr: 1e-3\n"
                      "seed: 3\n")
    cfg = from_mapping(load_config_file(nested))
    assert (cfg.dataset_path, cfg.top_k, cfg.lr, cfg.seed) == ("data.jsonl", 16, 1e-3, 3)
    nested.write_text("sae:\n  lr: 1e-3\n")
    with pytest.raises(ConfigError, match="config section 'sae' has no key 'lr'; it belongs to section 'optimisation'"):
        load_config_file(nested)
    nested.write_text("sae:\n  top_kk: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'top_k'"):
        load_config_file(nested)
