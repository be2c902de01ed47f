"""`hypotheses` on Debian: a planted target, the same target shuffled, and a numeric target.

The default SAE (batchtopk, 1,536 features, k 32, 100,000 examples) trains on the first 20,000 Debian
package descriptions; the hypotheses are drawn from the last 10,000, which it never trained on. The
planted target is one section ("games") with 10% of the labels flipped; the shuffled target is that
target permuted, over 200 seeds (how often anything is reported where nothing is there, with its 95%
interval; and the first 20 seeds one by one, as the tests count them); the numeric target is
2 x [section is games] plus Gaussian noise.
For each significant feature the script prints how many times more often it fires on games than on
the other sections (the right features fire mostly on games), and the held-out AUC (R^2) of the named
features against a linear probe on the dense embeddings.

    python -m benchmarks.hypotheses          # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import sparse, stats  # noqa: E402

from benchmarks.common import SHARED, first_rows_split  # noqa: E402
from sentence_sae import EmbeddingStore, SAEConfig, create_sae  # noqa: E402
from sentence_sae.analysis.hypotheses import Outcome, find_hypotheses  # noqa: E402
from sentence_sae.embeddings import encode_texts, load_sentence_model  # noqa: E402
from sentence_sae.metrics import encode_in_batches  # noqa: E402
from sentence_sae.trainer import Trainer  # noqa: E402

DATA = SHARED / "debian_descriptions.jsonl.gz"
N_TRAIN, N_TEXTS, SECTION = 20_000, 10_000, "games"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shuffles", type=int, default=200, help="seeds of the shuffled target")
    shuffles = parser.parse_args().shuffles
    training, held_out = first_rows_split(DATA, N_TRAIN, 2_000)
    cfg = SAEConfig(act_size=training.shape[1], device="cpu", num_examples=100_000, num_eval_examples=0,
                    checkpoint_freq=0, perf_log_freq=0, wandb_mode="disabled", output_dir=tempfile.mkdtemp())
    torch.manual_seed(cfg.seed)
    sae = create_sae(cfg)
    Trainer(sae, EmbeddingStore(training, cfg, held_out=held_out), cfg).train()
    rows = [json.loads(line) for line in gzip.open(DATA, "rt")][-N_TEXTS:]
    texts = [row["text"] for row in rows]
    embeddings = encode_texts(load_sentence_model(cfg.model_name, "cpu"), texts, 64)
    codes = encode_in_batches(sae, embeddings).float().numpy()
    on_section = np.array([row["label"] == SECTION for row in rows])
    rng = np.random.default_rng(0)
    planted = np.where(rng.random(len(rows)) < 0.1, ~on_section, on_section).astype(float)
    outcome = Outcome(texts, planted, sparse.csr_matrix(codes), embeddings.numpy(), "binary", "1", 0)
    fires = codes > 0
    print(f"Debian, {len(rows):,} held-out descriptions, {on_section.sum()} in '{SECTION}'\n")
    report = find_hypotheses(outcome)
    ratios = [fires[on_section, h["id"]].mean() / max(fires[~on_section, h["id"]].mean(), 1e-9)
              for h in report["hypotheses"]]
    print(f"planted ('{SECTION}', 10% flipped): {report['selected']} selected, {report['significant']} significant; "
          f"AUC named {report['named_features_score']:.3f}, dense probe {report['dense_probe_score']:.3f}, "
          f"carried {report['signal_carried']:.2f}")
    print("  firing rate on the section over elsewhere, per significant feature (effect = AUC alone): "
          + ", ".join(f"#{h['id']} {r:.1f}x ({h['effect']:.2f})" for h, r in zip(report["hypotheses"], ratios)))
    shuffled = [find_hypotheses(outcome._replace(target=np.random.default_rng(seed).permutation(planted)),
                                seed=seed)["significant"] for seed in range(shuffles)]
    print(f"shuffled, first 20 seeds: significant per seed {shuffled[:20]}; "
          f"{sum(n == 0 for n in shuffled[:20])} of 20 report nothing")
    false = sum(n > 0 for n in shuffled)
    low, high = stats.binomtest(false, shuffles).proportion_ci(0.95)
    print(f"shuffled, {shuffles} seeds: {false} report something ({false / shuffles:.1%}, 95% interval "
          f"{low:.1%}-{high:.1%}; the stated FDR, 5%, bounds it when nothing is there)")
    numeric = 2.0 * on_section + rng.normal(size=len(rows))
    report = find_hypotheses(outcome._replace(target=numeric, kind="numeric", positive=None))
    print(f"numeric (2 x section + N(0,1)): {report['selected']} selected, {report['significant']} significant; "
          f"R^2 named {report['named_features_score']:.3f}, dense probe {report['dense_probe_score']:.3f}")


if __name__ == "__main__":
    main()
