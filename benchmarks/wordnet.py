"""WordNet figures: each SAE variant trained on the first 100,000 definitions and judged on the
other 17,659.

Each variant with the default recipe of SAEConfig (batch 256, lr 3e-3, 20 warm-up steps, linear
decay over the last half, each architecture's default sparsity coefficient or k = 32) at
dict_size 8 x 384, 300,000 training examples: held-out FVU, L0, dead fraction and training
seconds, then every `sentence-sae eval` metric on the held-out lines with their WordNet category
as the label. As a baseline measured in the same run, a TopK SAE with the earlier research
script's settings (lr 3e-4, batch 1,024, input_unit_norm, no warm-up or decay, zero decoder bias,
dead after 5 batches). Then `explain` on the held-out lines for the default (BatchTopK) SAE: seconds per 10,000
texts and how often a feature's keyword label names its texts' WordNet category (see label_match
below), against shuffled labels and a most-frequent-word labeler.

    python -m benchmarks.wordnet [--data ../shared/data/wordnet_glosses.jsonl.gz] [--only topk ...]

Embeddings come from the sentence-sae cache (the whole file is encoded once, about 6 minutes;
the train and held-out files' caches are filled from it, not encoded again).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sentence_sae import SAEConfig, create_sae, post_init_cfg  # noqa: E402
from sentence_sae.activation_store import EmbeddingStore  # noqa: E402
from sentence_sae.analysis import explain_run  # noqa: E402
from sentence_sae.analysis.words import STOP_WORDS, candidates  # noqa: E402
from sentence_sae.cache import default_cache_root, open_cache  # noqa: E402
from sentence_sae.embeddings import encode_texts, load_sentence_model  # noqa: E402
from sentence_sae.evaluation import evaluate_run  # noqa: E402
from sentence_sae.trainer import Trainer  # noqa: E402

from benchmarks.common import DEFAULT_DATA, EXAMPLES, N_TRAIN, whole_embeddings  # noqa: E402

RECIPE = {"dict_size": 8 * 384, "top_k": 32, "num_examples": EXAMPLES}
VARIANTS = {
    "vanilla": {"sae_type": "vanilla"},
    "topk": {"sae_type": "topk"},
    "batchtopk": {"sae_type": "batchtopk"},
    "jumprelu": {"sae_type": "jumprelu"},
    "matryoshka": {"sae_type": "matryoshka"},
    "gated": {"sae_type": "gated"},
    "earlier-script settings (topk)": {
        "sae_type": "topk", "lr": 3e-4, "batch_size": 1024, "input_unit_norm": True, "b_dec_init": "zeros",
        "lr_warmup_steps": 0, "lr_decay_frac": 0.0, "dead_feature_window": 5 * 1024, "max_grad_norm": 1e5,
        "top_k_warmup_frac": 0.0,
    },
}


def split_files(data: Path, folder: Path) -> tuple[Path, Path]:
    """train.jsonl (first 100,000 lines) and heldout.jsonl (the rest), text and label only."""
    folder.mkdir(parents=True, exist_ok=True)
    train, held_out = folder / "train.jsonl", folder / "heldout.jsonl"
    if not (train.exists() and held_out.exists()):
        with gzip.open(data, "rt") as handle:
            rows = [json.loads(line) for line in handle]
        for path, part in ((train, rows[:N_TRAIN]), (held_out, rows[N_TRAIN:])):
            path.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in part))
    return train, held_out


def prefill_cache(path: Path, embeddings: np.ndarray, model) -> None:
    """Give a split file's cache the rows already encoded for the whole file (same texts, same model)."""
    cfg = post_init_cfg(SAEConfig(dataset_path=str(path), wandb_mode="disabled"), model)
    cache = open_cache(cfg, model)
    if cache.complete:
        return
    cache.acquire_writer()
    for start in range(cache.rows, len(embeddings), 16_384):
        cache.append(embeddings[start : start + 16_384])
    cache.mark_complete(0)
    cache.close()


def train_variant(name: str, settings: dict, train_path: Path, train_embeddings, out: Path, model) -> Path:
    values = {**RECIPE, **settings, "dataset_path": str(train_path), "num_eval_examples": 0, "perf_log_freq": 0,
              "checkpoint_freq": 0, "output_dir": str(out), "name": name.split(" ")[0] + ("-earlier" if " " in name else "")}
    cfg = post_init_cfg(SAEConfig().replace(**values), model)
    sae = create_sae(cfg)
    started = time.perf_counter()
    result = Trainer(sae, EmbeddingStore(train_embeddings, cfg), cfg).train()
    (result.run_dir / "train_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    return result.run_dir


CATEGORY_WORDS = {  # a few words naming each WordNet lexicographer file, for label matching
    "noun.act": "act action activity", "noun.animal": "animal", "noun.artifact": "artifact object made by people",
    "noun.attribute": "attribute property quality", "noun.body": "body part anatomy", "noun.cognition":
    "cognition knowledge thought", "noun.communication": "communication language writing", "noun.event": "event",
    "noun.feeling": "feeling emotion", "noun.food": "food drink", "noun.group": "group collection",
    "noun.location": "location place region", "noun.motive": "motive reason goal", "noun.object": "natural object",
    "noun.person": "person people", "noun.phenomenon": "natural phenomenon", "noun.plant": "plant",
    "noun.possession": "possession money property", "noun.process": "process", "noun.quantity": "quantity unit amount",
    "noun.relation": "relation", "noun.shape": "shape form", "noun.state": "state condition",
    "noun.substance": "substance material chemical", "noun.time": "time period", "verb.body": "bodily action verb",
    "verb.change": "change verb", "verb.cognition": "thinking verb", "verb.communication": "speaking telling verb",
    "verb.competition": "fighting competing verb", "verb.consumption": "eating drinking verb",
    "verb.contact": "touching hitting verb", "verb.creation": "making creating verb", "verb.emotion": "feeling verb",
    "verb.motion": "moving walking verb", "verb.perception": "seeing hearing verb", "verb.possession":
    "buying owning giving verb", "verb.social": "social political verb", "verb.stative": "being having verb",
    "verb.weather": "weather verb",
}


def label_match(features: list[dict], labels_of_rows: list[str], model) -> dict[str, float]:
    """For each feature firing on at least 5 texts whose top texts share a majority category (from
    CATEGORY_WORDS), does the category whose description is nearest (cosine) to the feature's label
    equal that majority? Compared with the same test on labels shuffled across features, and on a
    labeler that names the most frequent content word of the top texts."""
    names = sorted(CATEGORY_WORDS)
    category_vectors = torch.nn.functional.normalize(encode_texts(model, [CATEGORY_WORDS[n] for n in names]), dim=-1)
    judged = []
    for feature in features:
        if feature["dead"] or feature["count"] < 5 or not feature["label"]:
            continue
        majority, votes = Counter(labels_of_rows[t["row"]] for t in feature["top_texts"]).most_common(1)[0]
        if majority in CATEGORY_WORDS and votes * 2 > len(feature["top_texts"]):
            words = Counter(w for t in feature["top_texts"] for w in candidates(t["text"]) if " " not in w
                            and w not in STOP_WORDS)
            judged.append((feature["label"], majority, words.most_common(1)[0][0] if words else ""))

    def rate(labels: list[str]) -> float:
        vectors = torch.nn.functional.normalize(encode_texts(model, labels), dim=-1)
        nearest = (vectors @ category_vectors.T).argmax(-1).tolist()
        return float(np.mean([names[i] == majority for i, (_, majority, _) in zip(nearest, judged)]))

    shuffled = [label for label, _, _ in judged]
    np.random.default_rng(0).shuffle(shuffled)
    return {"features_judged": len(judged), "label_match": rate([label for label, _, _ in judged]),
            "shuffled_labels": rate(shuffled), "most_frequent_word": rate([word for _, _, word in judged])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=default_cache_root() / "benchmarks" / "wordnet")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--skip-explain", action="store_true")
    args = parser.parse_args()
    model = load_sentence_model("sentence-transformers/all-MiniLM-L6-v2", "cpu")
    whole = whole_embeddings(args.data)
    train_path, held_out_path = split_files(args.data, args.out)
    prefill_cache(train_path, whole[:N_TRAIN], model)
    prefill_cache(held_out_path, whole[N_TRAIN:], model)
    train_embeddings = whole[:N_TRAIN]
    print(f"WordNet: {N_TRAIN} training definitions, {len(whole) - N_TRAIN} held out; recipe {RECIPE}")
    runs, rows = {}, {}
    for name, settings in VARIANTS.items():
        if args.only and name.split(" ")[0] not in args.only:
            continue
        run_dir = train_variant(name, settings, train_path, train_embeddings, args.out / "runs", model)
        started = time.perf_counter()
        report = evaluate_run(run_dir, dataset_path=str(held_out_path), num_examples=len(whole) - N_TRAIN,
                              label_column="label", model=model)
        report["eval_seconds"] = time.perf_counter() - started
        report["train_seconds"] = float((run_dir / "train_seconds.txt").read_text())
        runs[name], rows[name] = run_dir, report
        print(f"  {name}: {run_dir}", flush=True)
    print("\n| variant | held-out FVU | L0 | dead | train s |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['fvu']:.3f} | {r['l0']:.1f} | {r['dead_frac']:.3f} | {r['train_seconds']:.1f} |")
    keys = ["fvu", "explained_variance", "mse", "cos", "norm_ratio", "l0", "dead_frac", "silent_frac", "dense_frac", "recall_at_10",
            "sim_spearman", "probe_acc_sae", "probe_acc_embed", "label_purity"]
    print("\n| variant | " + " | ".join(keys) + " |\n" + "|---" * (len(keys) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + " |")
    base = rows.get("earlier-script settings (topk)")
    if base and "topk" in rows:
        print(f"\nTopK FVU / earlier-script-settings FVU: {rows['topk']['fvu'] / base['fvu']:.2f}; label majority "
              f"share {base['label_majority_share']:.3f} over {base['label_classes']} classes")
    if args.skip_explain or "batchtopk" not in runs:
        return
    summary = explain_run(runs["batchtopk"], dataset_path=str(held_out_path), model=model)
    features = [json.loads(line) for line in Path(summary["features"]).read_text().splitlines()]
    labels_of_rows = [json.loads(line)["label"] for line in held_out_path.read_text().splitlines()]
    match = label_match(features, labels_of_rows, model)
    print(f"\nexplain (batchtopk) on {summary['texts']} held-out texts: {summary['seconds']:.1f} s, "
          f"{summary['seconds_per_10k_texts']:.1f} s per 10,000 texts; {summary['alive']} live features, "
          f"{summary['n_families']} families")
    print(f"label match over {match['features_judged']} features with a majority category: "
          f"{match['label_match']:.3f} (shuffled labels {match['shuffled_labels']:.3f}, most frequent word "
          f"{match['most_frequent_word']:.3f})")
    examples = sorted((f for f in features if not f["dead"]), key=lambda f: -f["count"])[:: max(1, summary["alive"] // 8)][:8]
    for feature in examples:
        print(f"  #{feature['id']} {feature['label']!r}: {feature['top_texts'][0]['text'][:70]!r}")


if __name__ == "__main__":
    main()
