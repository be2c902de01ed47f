"""What an SAE's codes keep of the embedding's retrieval, on query/document pairs it never trained on.

Debian package descriptions (`../shared/data/debian_descriptions.jsonl.gz`, shuffled): SAEs are
trained on the full texts of the first 20,000 (the default recipe, 100,000 examples); the last 5,000
become pairs, the one-line synopsis (`short`) as the query and the rest of the description as the
document. Each query searches its own document among the 5,000 with the dense embeddings (the
baseline, cosine), with their reconstructions (cosine) and with the codes as sparse vectors (dot
product): MRR@10, nDCG@10, recall@1 and recall@10 (`sentence_sae.evaluation.retrieval_report`, what
`sentence-sae eval --retrieval` reports), each with the share of the dense figure it keeps.

    python -m benchmarks.retrieval                      # the default SAE: batchtopk, 1,536 features, k 32
    python -m benchmarks.retrieval --full               # dictionary 1,536 to 12,288 x L0 8 to 128
    python -m benchmarks.retrieval --dict_sizes 6144 --top_ks 32 --sae_types topk,batchtopk
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from sentence_sae import (EmbeddingStore, SAEConfig, create_sae, embed, load_embeddings, load_sae,  # noqa: E402
                          post_init_cfg)
from sentence_sae.embeddings import encode_texts, load_sentence_model  # noqa: E402
from sentence_sae.evaluation import retrieval_report  # noqa: E402
from sentence_sae.metrics import reconstruction_metrics  # noqa: E402
from sentence_sae.trainer import Trainer  # noqa: E402

from benchmarks.common import SHARED  # noqa: E402

DATA = SHARED / "debian_descriptions.jsonl.gz"
N_TRAIN = 20_000
N_PAIRS = 5_000


def held_out_pairs() -> tuple[list[str], list[str]]:
    """(synopses, rest of the descriptions) of the last N_PAIRS descriptions."""
    rows = [json.loads(line) for line in gzip.open(DATA, "rt")][-N_PAIRS:]
    queries, documents = [], []
    for row in rows:
        rest = row["text"][len(row["short"]):].lstrip(". ").strip() if row["text"].startswith(row["short"]) else row["text"]
        if row["short"].strip() and rest:
            queries.append(row["short"])
            documents.append(rest)
    return queries, documents


def train(sae_type: str, dict_size: int, top_k: int, embeddings: torch.Tensor, model) -> tuple[object, float]:
    cfg = post_init_cfg(SAEConfig(sae_type=sae_type, dict_size=dict_size, top_k=top_k, num_examples=100_000,
                                  num_eval_examples=0, checkpoint_freq=0, perf_log_freq=0, wandb_mode="disabled",
                                  output_dir=tempfile.mkdtemp(prefix="retrieval-"), dataset_path=str(DATA)), model)
    started = time.perf_counter()
    result = Trainer(create_sae(cfg), EmbeddingStore(embeddings, cfg), cfg).train()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="dictionary 1,536 to 12,288 x L0 8 to 128")
    parser.add_argument("--sae_types", default="batchtopk")
    parser.add_argument("--dict_sizes", default="1536")
    parser.add_argument("--top_ks", default="32")
    args = parser.parse_args()
    sizes = [1536, 3072, 6144, 12288] if args.full else [int(s) for s in args.dict_sizes.split(",")]
    ks = [8, 16, 32, 64, 128] if args.full else [int(k) for k in args.top_ks.split(",")]

    model = load_sentence_model(SAEConfig().model_name, "cpu")
    info = embed({"dataset_path": str(DATA), "num_examples": N_TRAIN, "wandb_mode": "disabled"})
    training = torch.from_numpy(load_embeddings(info["cache_dir"])[:N_TRAIN].copy())
    queries, documents = held_out_pairs()
    query_embeddings, document_embeddings = encode_texts(model, queries, 64), encode_texts(model, documents, 64)
    print(f"Debian: SAEs trained on the first {N_TRAIN:,} descriptions; {len(queries):,} held-out pairs "
          "(synopsis -> rest of the description); scores are MRR@10 / nDCG@10 / recall@1 / recall@10\n")
    print("| sae_type | features | k | held-out FVU (documents) | dense | reconstructed (keeps MRR) | codes (keeps MRR) | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for sae_type in args.sae_types.split(","):
        for size in sizes:
            for k in ks:
                result, seconds = train(sae_type, size, k, training, model)
                sae = load_sae(result.run_dir)
                report = retrieval_report(sae, query_embeddings, document_embeddings)
                fvu = reconstruction_metrics(sae, document_embeddings)["fvu"]

                def cell(name: str) -> str:
                    r = report[name]
                    return (f"{r['mrr_at_10']:.3f} / {r['ndcg_at_10']:.3f} / {r['recall_at_1']:.3f} / "
                            f"{r['recall_at_10']:.3f}")

                print(f"| {sae_type} | {size} | {k} | {fvu:.4f} | {cell('dense')} | {cell('reconstructed')} "
                      f"({report['reconstructed_keeps']['mrr_at_10']:.3f}) | {cell('codes')} "
                      f"({report['codes_keeps']['mrr_at_10']:.3f}) | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
