"""Property-based fuzzing (Hypothesis): random values for every config key through the command
line's parser and post_init_cfg, and random row values through the real dataset readers. Every
outcome is a valid config, a handled row, or one of the project's own errors, never another
exception."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import fields
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentence_sae.cli import build_parser, config_from_args
from sentence_sae.config import SAEConfig
from sentence_sae.data import DatasetSource, TextCounter, iter_dataset_rows
from sentence_sae.errors import SentenceSAEError
from sentence_sae.finalize import post_init_cfg

KEYS = [f.name for f in fields(SAEConfig)]
AWKWARD = ["", " ", "none", "null", "inf", "-inf", "nan", "1e400", "-1", "0", "1_000", "true", "..", "../x", "a/b",
           "cuda", "cuda:7", "1e-320", "9" * 40, "\x00", "python-docs", "topk", "float16"]
VALUES = st.one_of(
    st.sampled_from(AWKWARD),
    st.text(max_size=16),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
SETTINGS = settings(max_examples=250, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def finalized_or_our_error(cfg_values: dict, model, tmp_path: Path) -> SAEConfig | None:
    try:
        cfg = SAEConfig().replace(**{"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
                                     **cfg_values})
        return post_init_cfg(cfg, model)
    except SentenceSAEError:
        return None


@SETTINGS
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_config_value_is_a_valid_config_or_a_clear_error(model, tmp_path, key, value):
    cfg = finalized_or_our_error({key: value}, model, tmp_path)
    if cfg is not None:  # accepted: then every number in it is finite and the run folder stays in output_dir
        assert all(math.isfinite(v) for _, v in cfg.items() if isinstance(v, float))
        assert "/" not in cfg.name and cfg.name not in (".", "..")


@SETTINGS
@given(key=st.sampled_from(KEYS), value=VALUES, other=st.sampled_from(KEYS), other_value=VALUES)
def test_any_command_line_is_a_valid_config_or_a_clear_error(model, tmp_path, key, value, other, other_value):
    argv = ["train", f"--{key}", str(value), f"--{other}", str(other_value)]
    try:
        args, extra = build_parser().parse_known_args(argv)
        cfg = config_from_args(args, extra)
    except SentenceSAEError:
        return
    finalized_or_our_error(cfg.to_dict(), model, tmp_path)


ROW_VALUES = st.one_of(
    st.none(), st.text(max_size=40), st.integers(), st.floats(), st.booleans(),
    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def read_all(path: Path) -> tuple[list[str], TextCounter]:
    counter = TextCounter()
    texts = [text for text, _ in iter_dataset_rows(DatasetSource.of(str(path)).open(), "text", str(path), counter)]
    return texts, counter


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(ROW_VALUES, min_size=1, max_size=12))
def test_any_jsonl_row_values_are_read_counted_or_refused(tmp_path, values):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": value}) + "\n" for value in values))
    try:
        texts, counter = read_all(path)
    except SentenceSAEError:
        return
    assert all(isinstance(text, str) and text.strip() for text in texts)
    assert len(texts) + counter.skipped_empty == len(values)  # every row is read or counted as skipped


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"),
                              max_size=30), min_size=1, max_size=12))
def test_csv_texts_are_read_as_written_or_counted(tmp_path, texts):
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "id"])
        writer.writerows([text, index] for index, text in enumerate(texts))
    try:
        read, counter = read_all(path)
    except SentenceSAEError:
        return
    # "NA", "null" or "nan" are texts too: nothing is turned into a missing value or shifted a column
    assert read == [text for text in texts if text.strip()]
    assert counter.skipped_empty == sum(1 for text in texts if not text.strip())


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.text(alphabet=st.sampled_from('ab,"\n x'), max_size=12), min_size=1, max_size=8))
def test_any_csv_lines_are_read_or_refused_by_line(tmp_path, lines):
    path = tmp_path / "rows.csv"
    path.write_text("text,label\n" + "\n".join(lines) + "\n")
    try:
        read, _ = read_all(path)
    except SentenceSAEError:
        return
    assert all(isinstance(text, str) for text in read)

