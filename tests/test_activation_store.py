"""The activation store on real files read through `datasets` and the real MiniLM model."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest
import torch
from helpers import make_cfg, write_jsonl

from sentence_sae import ActivationsStoreSBERT, EndOfData
from sentence_sae.activation_store import EmbeddingStore
from sentence_sae.data import open_dataset, python_docs_paragraphs
from sentence_sae.errors import DataError


def served_texts(store: ActivationsStoreSBERT) -> list[str]:
    texts = []
    while True:
        try:
            texts.extend(store.get_batch_tokens())
        except EndOfData:
            return texts


def test_python_docs_corpus_is_the_language_reference():
    paragraphs = python_docs_paragraphs()
    assert len(paragraphs) > 2000
    assert any("assert" in p and "debugging" in p for p in paragraphs)
    assert all(p.strip() == p and p for p in paragraphs)
    assert not any(p.endswith("****") for p in paragraphs)


def test_python_docs_corpus_draws_its_held_out_texts_from_every_topic_in_a_fixed_order():
    """The reference is grouped by topic; a run's held-out and validation texts come from the start of
    the corpus, so the corpus comes in a fixed shuffled order, with its topics as labels."""
    import hashlib

    from pydoc_data.topics import topics

    rows = list(open_dataset("python-docs"))
    assert [row["text"] for row in rows] == list(python_docs_paragraphs())
    assert set(rows[0]) == {"text", "topic"} and {row["topic"] for row in rows} <= set(topics)
    held_out_topics = Counter(row["topic"] for row in rows[:256])
    assert len(held_out_topics) >= 40
    per_topic, covered, first_topics = Counter(row["topic"] for row in rows), 0, 0
    for topic in sorted(topics):  # the reference's own order: its first 256 paragraphs are a few topics
        covered, first_topics = covered + per_topic[topic], first_topics + 1
        if covered >= 256:
            break
    assert first_topics < 20
    ranks = [hashlib.blake2b(row["text"].encode(), digest_size=8).digest() for row in rows]
    assert ranks == sorted(ranks)  # the order is the texts' hash order: the same on every machine


def test_batches_texts_embeddings_and_minibatches(tmp_path, model, jsonl_file, small_texts):
    cfg = make_cfg(tmp_path, model, num_val_examples=0, dataset_path=str(jsonl_file), model_batch_size=8,
                   num_batches_in_buffer=4, batch_size=16, num_eval_examples=10, num_epochs=1, num_examples=None)
    store = ActivationsStoreSBERT(model, cfg)
    assert store.eval_texts == small_texts[:10]  # held out first, before any training text
    texts = store.get_batch_tokens()
    assert texts == small_texts[10:18]
    embeddings = store.get_activations(texts)
    assert embeddings.shape == (8, 384) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(8), rtol=1e-4, atol=1e-4)
    batch = store.next_batch()
    assert batch.shape == (16, 384)
    assert store.held_out_embeddings().shape == (10, 384)


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "csv", "parquet", "txt", "folder"])
def test_local_formats_stream_through_datasets(tmp_path, small_texts, fmt):
    texts = [t.replace("\n", " ") for t in small_texts[:20]]
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    elif fmt == "jsonl.gz":
        path = tmp_path / "d.jsonl.gz"
        with gzip.open(path, "wt") as handle:
            handle.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    elif fmt == "csv":
        import csv

        path = tmp_path / "d.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "n"])
            writer.writerows([t, i] for i, t in enumerate(texts))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "d.parquet"
        pq.write_table(pa.table({"text": texts}), path)
    elif fmt == "txt":
        path = tmp_path / "d.txt"
        path.write_text("\n".join(texts) + "\n")
    else:
        path = tmp_path / "folder"
        path.mkdir()
        write_jsonl(path / "a.jsonl", [{"text": t} for t in texts[:10]])
        write_jsonl(path / "b.jsonl", [{"text": t} for t in texts[10:]])
    dataset = open_dataset(str(path))
    assert [row["text"] for row in dataset] == texts


def test_example_limit_stops_cleanly(tmp_path, model, jsonl_file):
    cfg = make_cfg(tmp_path, model, dataset_path=str(jsonl_file), model_batch_size=8, num_batches_in_buffer=2,
                   batch_size=8, num_eval_examples=5, num_examples=21)
    store = ActivationsStoreSBERT(model, cfg)
    sizes = [len(batch) for batch in store]
    assert sum(sizes) == 21 and store.examples_served == 21
    with pytest.raises(EndOfData, match="reached num_examples=21"):
        store.next_batch()


def test_epochs_repeat_every_training_text_and_never_the_held_out(tmp_path, model, jsonl_file, small_texts):
    cfg = make_cfg(tmp_path, model, num_val_examples=0, dataset_path=str(jsonl_file), model_batch_size=8, num_batches_in_buffer=2,
                   batch_size=8, num_eval_examples=12, num_epochs=3, num_examples=None)
    store = ActivationsStoreSBERT(model, cfg)
    counts = Counter(served_texts(store))
    assert set(counts) == set(small_texts[12:]) and set(counts.values()) == {3}
    with pytest.raises(EndOfData, match="dataset exhausted"):
        store.get_batch_tokens()


def test_validation_texts_follow_the_held_out_ones_and_are_never_trained_on(tmp_path, model, jsonl_file, small_texts):
    cfg = make_cfg(tmp_path, model, dataset_path=str(jsonl_file), model_batch_size=8, num_batches_in_buffer=2,
                   batch_size=8, num_eval_examples=10, num_val_examples=6, num_epochs=2, num_examples=None)
    store = ActivationsStoreSBERT(model, cfg)
    expected = model.encode(small_texts[10:16], convert_to_tensor=True)
    torch.testing.assert_close(store.validation_embeddings(), expected, rtol=1e-4, atol=1e-5)
    assert Counter(served_texts(store)) == Counter(small_texts[16:] * 2)  # validation texts never served
    served = torch.cat(list(ActivationsStoreSBERT(model, cfg)))
    assert len(served) == 2 * 44
    assert torch.cdist(served, store.validation_embeddings()).min() > 1e-3
    assert torch.cdist(served, store.held_out_embeddings()).min() > 1e-3


def test_the_validation_set_follows_the_corpus_size_unless_set(tmp_path):
    from sentence_sae import SAEConfig

    sizes = {}
    for rows in (300, 3_000, 20_000, 100_000):
        store = EmbeddingStore(torch.randn(rows, 4), SAEConfig(act_size=4, device="cpu"))
        sizes[rows] = store.num_val_examples
        assert store.train_start == 256 + store.num_val_examples
        assert len(store.validation_embeddings()) == store.num_val_examples
    assert sizes == {300: 4, 3_000: 137, 20_000: 987, 100_000: 2_048}  # 5%, at most 10%, 64 to 2,048
    fixed = EmbeddingStore(torch.randn(3_000, 4), SAEConfig(act_size=4, device="cpu", num_val_examples=10))
    assert fixed.num_val_examples == 10 and fixed.n_train == 3_000 - 266


def test_refill_serves_each_example_once_per_pass_and_shuffles(tmp_path, model, jsonl_file, docs_embeddings):
    # EmbeddingStore shares the buffer logic; real embeddings, many refills of a small buffer.
    cfg = make_cfg(tmp_path, model, num_val_examples=0, model_batch_size=16, num_batches_in_buffer=4, batch_size=24,
                   num_eval_examples=100, num_epochs=2, num_examples=None)
    data = docs_embeddings[:500].clone()
    data[:, 0] = torch.arange(500)  # a tag per row: the corpus repeats a few paragraphs
    store = EmbeddingStore(data, cfg)
    batches = list(store)
    served = torch.cat(batches)
    assert len(served) == 2 * 400 and store.examples_served == 800
    assert all(len(b) == 24 for b in batches[:-1])
    keys = Counter(int(row[0]) for row in served)
    assert set(keys.values()) == {2} and len(keys) == 400
    assert not torch.equal(served[:400], data[100:])  # shuffled, not in file order
    torch.testing.assert_close(store.held_out_embeddings(), data[:100])


def test_unbounded_epochs_repeat_until_the_example_limit(tmp_path, model, docs_embeddings):
    cfg = make_cfg(tmp_path, model, model_batch_size=16, num_batches_in_buffer=4, batch_size=32,
                   num_eval_examples=0, num_examples=250)
    store = EmbeddingStore(docs_embeddings[:100], cfg)
    assert store.planned_examples() == 250
    assert sum(len(b) for b in store) == 250


def test_empty_and_missing_texts_are_skipped_and_counted(tmp_path, model, small_texts):
    rows = [{"text": small_texts[0]}, {"text": ""}, {"text": "   "}, {"text": None}, {"other": 1},
            {"text": small_texts[1]}, {"text": small_texts[2]}]
    path = write_jsonl(tmp_path / "gaps.jsonl", rows)
    cfg = make_cfg(tmp_path, model, num_val_examples=0, dataset_path=str(path), num_eval_examples=1, num_examples=None, num_epochs=1)
    store = ActivationsStoreSBERT(model, cfg)
    assert served_texts(store) == small_texts[1:3]
    assert sum(len(batch) for batch in store) == 2
    assert store.counter.skipped_empty == 4
    assert store.corpus.cache.complete and store.corpus.skipped_texts == 4


def test_missing_text_column_lists_the_columns(tmp_path, model, small_texts):
    path = write_jsonl(tmp_path / "d.jsonl", [{"sentence": t, "label": 1} for t in small_texts[:5]])
    cfg = make_cfg(tmp_path, model, num_val_examples=0, dataset_path=str(path))
    with pytest.raises(DataError, match="column 'text' not found in .*columns present: sentence, label; set text_column"):
        ActivationsStoreSBERT(model, cfg)
    store = ActivationsStoreSBERT(model, cfg.replace(text_column="sentence", num_eval_examples=1, num_epochs=1))
    assert len(store.get_batch_tokens()) == 4


@pytest.mark.parametrize("rows", [[], [{"text": ""}, {"text": "  "}]])
def test_empty_dataset_is_an_error(tmp_path, model, rows):
    path = tmp_path / "empty.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(tmp_path, model, dataset_path=str(path))
    with pytest.raises(DataError, match="holds no texts"):
        ActivationsStoreSBERT(model, cfg)


def test_dataset_smaller_than_the_held_out_set_is_an_error(tmp_path, model, small_texts):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in small_texts[:5]])
    cfg = make_cfg(tmp_path, model, num_val_examples=0, dataset_path=str(path), num_eval_examples=10)
    with pytest.raises(DataError, match="only 5 texts.*num_eval_examples=10.*lower them"):
        ActivationsStoreSBERT(model, cfg)


def test_missing_corrupt_and_unknown_files(tmp_path, model, small_texts):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(str(tmp_path / "nope.jsonl"))
    unknown = tmp_path / "data.xlsx"
    unknown.write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        open_dataset(str(unknown))
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text(json.dumps({"text": small_texts[0]}) + "\n{this is not json\n")
    cfg = make_cfg(tmp_path, model, dataset_path=str(corrupt), num_eval_examples=0)
    with pytest.raises(DataError, match="corrupt.jsonl"):
        served_texts(ActivationsStoreSBERT(model, cfg))
