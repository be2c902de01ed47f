"""Does the feature map keep like with like? Its structure score against a random layout and against
the earlier layout (UMAP of the decoder directions), on texts the SAE never trained on.

For Debian (the default SAE, 1,536 features, trained on the first 20,000 descriptions; mapped on the
last 10,000) and WordNet (trained on the first 100,000 glosses, mapped on the other 17,659), each
live feature's dominant label is the section (lexicographer category) holding the largest share of
its activation on the mapped texts. The structure score is the share of a feature's 10 nearest map
neighbours that share its dominant label (`sentence_sae.analysis.feature_map.structure_score`), the
mean over three seeds of each layout (the random one included). Also
printed: the same share for the features whose dominant label is Debian's `games` section alone.

    python -m benchmarks.feature_map          # about 6 minutes on 2 cores (umap-learn for the baseline)
    python -m benchmarks.feature_map --tsne_iterations 1000   # the map at scikit-learn's default length
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import SHARED, first_rows_split, whole_embeddings  # noqa: E402
from sentence_sae import EmbeddingStore, SAEConfig, create_sae  # noqa: E402
from sentence_sae.analysis import feature_map  # noqa: E402
from sentence_sae.analysis.feature_map import map_layout, structure_score  # noqa: E402
from sentence_sae.analysis.features import FeatureStats, collect_feature_stats  # noqa: E402
from sentence_sae.embeddings import encode_texts, load_sentence_model  # noqa: E402
from sentence_sae.trainer import Trainer  # noqa: E402

SEEDS = (0, 1, 2)


def debian() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(training embeddings, mapped embeddings, their labels): first 20,000 rows / last 10,000."""
    data = SHARED / "debian_descriptions.jsonl.gz"
    training, _ = first_rows_split(data, 20_000, 0)
    rows = [json.loads(line) for line in gzip.open(data, "rt")][-10_000:]
    mapped = encode_texts(load_sentence_model(SAEConfig().model_name, "cpu"), [r["text"] for r in rows], 64)
    return training, mapped.float(), np.array([r["label"] for r in rows])


def wordnet() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(training embeddings, mapped embeddings, their labels): first 100,000 glosses / the rest."""
    data = SHARED / "wordnet_glosses.jsonl.gz"
    embeddings = torch.from_numpy(np.asarray(whole_embeddings(data)))
    labels = np.array([json.loads(line)["label"] for line in gzip.open(data, "rt")])
    return embeddings[:100_000], embeddings[100_000:], labels[100_000:]


def dominant_labels(stats: FeatureStats, labels: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each live feature's dominant label index, the label names)."""
    names, index = np.unique(labels, return_inverse=True)
    mass = np.zeros((len(stats.counts), len(names)))
    feature = np.repeat(np.arange(len(stats.counts)), np.diff(stats.starts))
    np.add.at(mass, (feature, index[stats.sorted_rows]), stats.sorted_values)
    return mass.argmax(1)[live], names


def decoder_layout(directions: np.ndarray, seed: int) -> np.ndarray:
    """The earlier map: UMAP (cosine, 15 neighbours) of the decoder directions."""
    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return umap.UMAP(n_neighbors=15, metric="cosine", random_state=seed).fit_transform(directions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tsne_iterations", type=int, default=feature_map.TSNE_ITERATIONS)
    feature_map.TSNE_ITERATIONS = parser.parse_args().tsne_iterations
    table = ["| corpus | live features | random | decoder (UMAP) | map | x decoder | x random "
             "| games features: map (decoder) |", "|---|---|---|---|---|---|---|---|"]
    for name, load in (("debian", debian), ("wordnet", wordnet)):
        training, mapped, labels = load()
        cfg = SAEConfig(act_size=training.shape[1], device="cpu", num_eval_examples=0, checkpoint_freq=0,
                        perf_log_freq=0, wandb_mode="disabled", output_dir=tempfile.mkdtemp())
        torch.manual_seed(cfg.seed)
        sae = create_sae(cfg)
        Trainer(sae, EmbeddingStore(training, cfg), cfg).train()
        stats = collect_feature_stats(sae, iter(mapped.split(4096)))
        live = np.flatnonzero(stats.counts)
        dominant, names = dominant_labels(stats, labels, live)
        decoder = sae.W_dec.detach().float().numpy()
        started = time.perf_counter()
        layouts = {"random": [np.random.default_rng(seed).random((len(live), 2)) for seed in SEEDS],
                   "decoder": [decoder_layout(decoder[live], seed) for seed in SEEDS],
                   "map": [map_layout(stats, decoder, live, seed) for seed in SEEDS]}
        seconds = time.perf_counter() - started
        score = {key: np.mean([structure_score(c, dominant) for c in coords]) for key, coords in layouts.items()}
        games = ""
        if "games" in names:
            on_games = dominant == list(names).index("games")
            games = " / ".join(f"{np.mean([structure_score(c, dominant, among=on_games) for c in layouts[k]]):.2f}"
                               for k in ("map", "decoder")) + f" ({on_games.sum()} features)"
        table.append(f"| {name} | {len(live):,} | {score['random']:.3f} | {score['decoder']:.3f} | {score['map']:.3f} "
                     f"| {score['map'] / score['decoder']:.2f} | {score['map'] / score['random']:.2f} | {games} |")
        print(table[-1], f"layouts {seconds:.1f} s", flush=True)
    print("\n".join(table))
    print("structure score: share of a feature's 10 nearest map neighbours with its dominant label (games: the "
          "same over the features whose dominant label is games)")


if __name__ == "__main__":
    main()
