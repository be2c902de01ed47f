"""How good are explain's labels on texts the SAE never trained on?

For WordNet glosses (train on the first 100,000, explain the other 17,659) and the Debian package
descriptions (a seeded random 10,000 held out, the other 50,315 for training): the default SAE
(batchtopk, 8 x 384 features, k 32, 300,000 examples) is trained, then `explain` runs on the held-out
texts and scores every label (AUROC of the label picking out the texts its feature fires on, by
embedding cosine and by BM25, on texts not used to make the label), with three baselines measured in
the same run: the labels shuffled across features, the most frequent content word of the label texts,
and the top text itself. Beside them, on the same scoring texts: the earlier labeler (its keyword
terms from the top 8 texts, joined, with no concept choice, no support or contrast texts).

    python -m benchmarks.labels [--corpora wordnet,debian] [--string_backend fast]

`--string_backend` embeds the labeller's terms and labels with that backend instead of
`embeddings.string_backend`'s choice (OpenVINO where installed), to compare the two.

Embeddings come from the sentence-sae cache, `--encode_backend fast` (each whole file is encoded once;
the split files' caches are filled from it).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402

from sentence_sae import SAEConfig, create_sae, embed, load_embeddings, post_init_cfg  # noqa: E402
from sentence_sae.activation_store import EmbeddingStore  # noqa: E402
from sentence_sae.analysis import explain_run  # noqa: E402
from sentence_sae.cache import open_cache  # noqa: E402
from sentence_sae.embeddings import load_sentence_model  # noqa: E402
from sentence_sae.trainer import Trainer  # noqa: E402

from benchmarks.common import SHARED  # noqa: E402
BACKEND = "fast"
RECIPE = {"sae_type": "batchtopk", "dict_size": 8 * 384, "top_k": 32, "num_examples": 300_000}


def split(name: str) -> tuple[np.ndarray, np.ndarray, Path]:
    """(training rows, held-out rows, data file) of a corpus."""
    if name == "wordnet":
        path = SHARED / "wordnet_glosses.jsonl.gz"
        n = sum(1 for _ in gzip.open(path, "rt"))
        return np.arange(100_000), np.arange(100_000, n), path
    path = SHARED / "debian_descriptions.jsonl.gz"
    n = sum(1 for _ in gzip.open(path, "rt"))
    order = np.random.default_rng(0).permutation(n)
    return np.sort(order[10_000:]), np.sort(order[:10_000]), path


def held_out_file(path: Path, rows: np.ndarray, embeddings: np.ndarray, model, folder: Path) -> Path:
    """The held-out texts as a jsonl file whose embedding cache is filled from the whole file's."""
    with gzip.open(path, "rt") as handle:
        lines = handle.readlines()
    out = folder / f"{path.name.split('.')[0]}-heldout.jsonl"
    out.write_text("".join(json.dumps({"text": json.loads(lines[r])["text"]}) + "\n" for r in rows))
    cfg = post_init_cfg(SAEConfig(dataset_path=str(out), wandb_mode="disabled", encode_backend=BACKEND), model)
    cache = open_cache(cfg, model)
    if not cache.complete:
        cache.acquire_writer()
        cache.append(np.ascontiguousarray(embeddings[rows]))
        cache.mark_complete(0)
    cache.close()
    return out


def earlier_labeler_scores(run_dir: Path, held_path: Path, model) -> tuple[np.ndarray, np.ndarray]:
    """(embedding, lexical) label scores of the earlier labeler, on the scoring texts explain used."""

    from sentence_sae.analysis.features import collect_feature_stats
    from sentence_sae.analysis.keywords import KeywordLabeler
    from sentence_sae.analysis.label_score import ScoringTexts, score_labels, scoring_set
    from sentence_sae.embeddings import encode_texts
    from sentence_sae.runs import open_run

    run = open_run(run_dir, "cpu", model, dataset_path=str(held_path))
    texts = [json.loads(line)["text"] for line in held_path.read_text().splitlines()]
    corpus = run.corpus()
    embeddings = corpus.embeddings_at(np.arange(len(texts)), texts)
    corpus.close()
    stats = collect_feature_stats(run.sae, iter(embeddings.split(4096)))
    scoring = scoring_set([stats.firing_rows(f) for f in range(run.sae.d_sae)], 8, len(texts))
    alive = [f for f in range(run.sae.d_sae) if stats.counts[f] > 0]  # c-TF-IDF counts over all labelled features
    rows = [stats.top_rows[f][:8] for f in alive]
    terms = dict(zip(alive, KeywordLabeler(model).terms_all([[texts[r] for r in r8] for r8 in rows],
                                                            [embeddings[r8] for r8 in rows])))
    labels = [", ".join(terms[int(f)]) for f in scoring.features]
    return score_labels(labels, encode_texts(model, labels, 256), ScoringTexts(scoring, texts, lambda r: embeddings[r]))


def train_default(name: str, folder: Path, model) -> tuple[Path, np.ndarray, np.ndarray, Path]:
    """The RECIPE SAE trained on a corpus's training rows: (run folder, all embeddings, held-out rows, data file)."""
    import torch

    train_rows, held_rows, path = split(name)
    if not path.exists():
        sys.exit(f"{path} is missing")
    info = embed({"dataset_path": str(path), "num_examples": None, "encode_backend": BACKEND, "wandb_mode": "disabled"})
    embeddings = np.asarray(load_embeddings(info["cache_dir"]))
    cfg = post_init_cfg(SAEConfig().replace(**RECIPE, dataset_path=str(path), encode_backend=BACKEND, num_eval_examples=0,
                                            perf_log_freq=0, checkpoint_freq=0, output_dir=str(folder / "runs"),
                                            wandb_mode="disabled"), model)
    torch.manual_seed(0)
    run_dir = Trainer(create_sae(cfg), EmbeddingStore(torch.from_numpy(embeddings[train_rows]), cfg), cfg).train().run_dir
    return run_dir, embeddings, held_rows, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="wordnet,debian")
    parser.add_argument("--string_backend", help="the labeller's backend, in place of string_backend's choice")
    args = parser.parse_args()
    if args.string_backend:
        import sentence_sae.analysis.explain as explain_module

        explain_module.string_backend = lambda device: args.string_backend
    model = load_sentence_model(SAEConfig().model_name, "cpu", BACKEND)
    goals = []
    table = ["| corpus | scorer | labels | earlier labeler | shuffled | most frequent word | top text | labels >= 0.8 "
             "| earlier >= 0.8 |", "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        for name in args.corpora.split(","):
            run_dir, embeddings, held_rows, path = train_default(name, Path(folder), model)
            held_path = held_out_file(path, held_rows, embeddings, model, Path(folder))
            summary = explain_run(run_dir, dataset_path=str(held_path), model=model, with_map=False)
            scores = summary["label_scores"]
            print(f"{name}: {summary['texts']} held-out texts, {summary['alive']} live features, "
                  f"{scores['scored_features']} scored; explain {summary['seconds']:.0f} s", flush=True)
            earlier = earlier_labeler_scores(run_dir, held_path, model)
            for index, scorer in enumerate(("embedding", "lexical")):
                s = scores[scorer]
                table.append(f"| {name} | {scorer} | {s['labels']:.3f} | {earlier[index].mean():.3f} | {s['shuffled']:.3f} "
                             f"| {s['frequent_word']:.3f} | {s['top_text']:.3f} | {s['share_at_0.8']:.0%} "
                             f"| {(earlier[index] >= 0.8).mean():.0%} |")
            goals.append(goal_lines(name, scores))
    print("\n" + "\n".join(table))
    print("\ngoals: mean embedding AUROC >= 0.85, >= 70% of scored features at >= 0.8, +0.05 over the "
          "most frequent word in both scorers\n" + "\n".join(goals))


def goal_lines(name: str, scores: dict) -> str:
    """The label goals for one corpus, from the 4-decimal means explain reports."""
    embedding, lexical = scores["embedding"], scores["lexical"]
    checks = [(f"embedding mean {embedding['labels']:.4f}", embedding["labels"] >= 0.85),
              (f"share at >= 0.8 {embedding['share_at_0.8']:.1%}", embedding["share_at_0.8"] >= 0.70)]
    for scorer, s in (("embedding", embedding), ("lexical", lexical)):
        margin = s["labels"] - s["frequent_word"]
        checks.append((f"{scorer} {margin:+.4f} over the most frequent word", margin >= 0.05))
    return f"{name}: " + "; ".join(f"{text} ({'met' if ok else 'NOT met'})" for text, ok in checks)


if __name__ == "__main__":
    main()
