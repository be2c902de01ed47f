"""Decision: the similarity-preserving loss (`similarity_coeff`) is optional, off by default, unless it
raises held-out retrieval on both Debian and WordNet at no more than 2% held-out FVU.

The term is the KL divergence between each example's softmax over its cosine similarities to the rest
of the batch, of the embeddings and of the reconstructions (Kang et al. 2025). Each corpus trains the
default SAE (batchtopk, 1,536 features, k 32, 100,000 examples) on its first 20,000 texts (2,000 of
them held out at random for FVU) with the term at several weights, and searches query/document
pairs from texts it never trained on (the last 5,000 of the corpus): Debian, the synopsis for the
rest of the description (benchmarks/retrieval.py's pairs); WordNet, the lemma for its gloss (a
reverse dictionary). Prints held-out FVU, and the share of the dense MRR@10 the reconstructions and
the codes keep.

    python -m benchmarks.studies.similarity_loss          # about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile

import torch

from benchmarks.common import SHARED, first_rows_split
from benchmarks.retrieval import held_out_pairs
from sentence_sae import EmbeddingStore, SAEConfig, create_sae
from sentence_sae.embeddings import encode_texts, load_sentence_model
from sentence_sae.evaluation import retrieval_report
from sentence_sae.metrics import reconstruction_metrics
from sentence_sae.trainer import Trainer

N_TEXTS, HELD_OUT, N_PAIRS = 20_000, 2_000, 5_000
WEIGHTS = (0.0, 30.0, 300.0)


def wordnet_pairs() -> tuple[list[str], list[str]]:
    """(lemma, gloss) of the last N_PAIRS WordNet glosses."""
    rows = [json.loads(line) for line in gzip.open(SHARED / "wordnet_glosses.jsonl.gz", "rt")][-N_PAIRS:]
    return [row["lemma"].replace("_", " ") for row in rows], [row["text"] for row in rows]


CORPORA = {"debian": (SHARED / "debian_descriptions.jsonl.gz", held_out_pairs),
           "wordnet": (SHARED / "wordnet_glosses.jsonl.gz", wordnet_pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=",".join(f"{w:g}" for w in WEIGHTS))
    args = parser.parse_args()
    model = load_sentence_model(SAEConfig().model_name, "cpu")
    print("| corpus | similarity_coeff | held-out FVU | L0 | reconstructed keeps MRR@10 | codes keep MRR@10 |\n"
          "|---|---|---|---|---|---|")
    for corpus, (path, pairs) in CORPORA.items():
        training, held_out = first_rows_split(path, N_TEXTS, HELD_OUT)
        queries, documents = pairs()
        query_embeddings, document_embeddings = encode_texts(model, queries, 64), encode_texts(model, documents, 64)
        for weight in (float(w) for w in args.weights.split(",")):
            cfg = SAEConfig(act_size=training.shape[1], device="cpu", num_examples=100_000, num_eval_examples=0,
                            checkpoint_freq=0, perf_log_freq=0, wandb_mode="disabled", similarity_coeff=weight,
                            output_dir=tempfile.mkdtemp(prefix="similarity-"))
            torch.manual_seed(cfg.seed)
            sae = create_sae(cfg)
            Trainer(sae, EmbeddingStore(training, cfg, held_out=held_out), cfg).train()
            sae.eval()
            measured = reconstruction_metrics(sae, held_out)
            report = retrieval_report(sae, query_embeddings, document_embeddings)
            print(f"| {corpus} | {weight:g} | {measured['fvu']:.4f} | {measured['l0']:.1f} | "
                  f"{report['reconstructed_keeps']['mrr_at_10']:.3f} | {report['codes_keeps']['mrr_at_10']:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
