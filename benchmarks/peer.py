"""Side by side with SAELens on the same embeddings.

40,000 WordNet glosses for training, 5,000 others held out (benchmarks/panel.py's split), 3,072
features, k 32, 200,000 examples; TopK and BatchTopK. Three runs of each:
- sentence-sae with its defaults (the recipe that follows the run);
- SAELens (the installed sae-lens, from the test extra) at its own defaults: lr 3e-4, batch 4,096, a
  constant learning rate, dead window 1,000 steps;
- SAELens at our settings: the batch and lr our recipe picks for 200,000 examples (128, 2.4e-3), 5% warm-up,
  linear decay to 0 over the last half, dead window 20,000 examples.
SAELens's models are saved for inference and loaded back (`SAE.load_from_disk`), so its BatchTopK is
judged as it ships: a JumpReLU with the threshold it learned. Each line prints the FVU and L0 on the
held-out texts, the share of features dead in training (not fired in the last 20,000 examples, each
side counting it its own way), and the ratio to our defaults' FVU.

With `--wide`, the setting where features died: 6,144 features on the first 20,000 Debian
descriptions (2,000 of them held out at random), 100,000 examples, ours against SAELens at our settings.

    python -m benchmarks.peer            # about 10 minutes on 2 cores
    python -m benchmarks.peer --wide     # about 10 minutes
    python -m benchmarks.peer --ablate   # SAELens's choices one at a time, on both sides (about 20 minutes)
"""

from __future__ import annotations

import argparse
import math
import tempfile
from typing import NamedTuple

import numpy as np
import torch

from benchmarks.common import SHARED, first_rows_split
from benchmarks.panel import CORPORA, corpus_embeddings, train_one
from sentence_sae.recipe import batch_size_for, learning_rate_for

EXAMPLES, DICT, K = 200_000, 3072, 32
WIDE_DICT, WIDE_EXAMPLES = 6144, 100_000


def heldout_metrics(encode, decode, held_out: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        codes = encode(held_out)
        error = (decode(codes) - held_out).pow(2).sum().item()
    variance = (held_out - held_out.mean(0)).pow(2).sum().item()
    return error / variance, float((codes > 0).sum(-1).float().mean())


class SAELensResult(NamedTuple):
    fvu: float
    l0: float
    dead: float
    """Share of features that had not fired in SAELens's own dead window when training ended."""


def saelens_run(training: torch.Tensor, held_out: torch.Tensor, variant: str, ours: bool,
                examples: int = EXAMPLES, overrides: dict | None = None, dict_size: int = DICT) -> SAELensResult:
    from sae_lens import SAE
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    config_class, sae_class = {"topk": (TopKTrainingSAEConfig, TopKTrainingSAE),
                               "batchtopk": (BatchTopKTrainingSAEConfig, BatchTopKTrainingSAE)}[variant]
    sae = sae_class(config_class(d_in=training.shape[1], d_sae=dict_size, k=K, dtype="float32", device="cpu",
                                 **(overrides or {})))
    batch = batch_size_for(examples) if ours else 4096
    steps = examples // batch
    schedule = dict(lr=learning_rate_for(steps, small_encoder_start=True), lr_warm_up_steps=math.ceil(0.05 * steps),
                    lr_decay_steps=steps // 2,
                    dead_feature_window=20_000 // batch) if ours else {}
    lr = schedule.get("lr", 3e-4)
    # lr_end is filled by SAELens's runner config, not by the trainer's: set it as the runner does
    trainer_cfg = SAETrainerConfig(total_training_samples=examples, train_batch_size_samples=batch, device="cpu",
                                   n_checkpoints=0, save_final_checkpoint=False, lr_end=lr / 10, **schedule)

    def batches():
        generator = torch.Generator().manual_seed(1)
        while True:
            order = torch.randperm(len(training), generator=generator)
            for start in range(0, len(order) - batch + 1, batch):
                yield training[order[start : start + batch]]

    trainer = SAETrainer(trainer_cfg, sae, batches())
    trainer.fit()
    dead = float(trainer.dead_neurons.float().mean())
    with tempfile.TemporaryDirectory() as folder:
        sae.save_inference_model(folder)
        loaded = SAE.load_from_disk(folder, device="cpu")
    loaded.eval()
    return SAELensResult(*heldout_metrics(loaded.encode, loaded.decode, held_out), dead)


# SAELens's choice -> ours, one at a time, from SAELens at our settings. (Its TopK refuses input
# standardization with its AuxK loss, so that choice is tried from our side only.)
SAELENS_CHOICES = {
    "decoder rows at norm 1 (SAELens: 0.1)": {"decoder_init_norm": 1.0},
    "no rescaling by decoder norm (SAELens: rescale)": {"rescale_acts_by_decoder_norm": False},
    "AuxK coefficient 1/32 (SAELens: 1)": {"aux_loss_coefficient": 1 / 32},
}
OUR_CHOICES = {  # ours -> SAELens's, one at a time, from our defaults
    "b_dec starting at zero (ours: the data mean)": {"b_dec_init": "zeros"},
    "no input standardization (ours: per text)": {"input_unit_norm": False},
    "AuxK coefficient 1 (ours: 1/32)": {"aux_penalty": 1.0},
    "encoder initialized as W_dec^T (ours: 0.1 x W_dec^T)": {"encoder_init_scale": 1.0},
}


def ablate(training: torch.Tensor, held_out: torch.Tensor, examples: int, variants: list[str]) -> None:
    """Which of SAELens's choices make a difference: each switched alone, on both sides."""
    for variant in variants:
        base = saelens_run(training, held_out, variant, True, examples).fvu
        print(f"{variant:9s} SAELens at our settings                          FVU {base:.4f}", flush=True)
        for label, overrides in SAELENS_CHOICES.items():
            fvu, l0, _ = saelens_run(training, held_out, variant, True, examples, overrides)
            print(f"{variant:9s}   with {label:44s} FVU {fvu:.4f}  L0 {l0:.1f}  ({fvu / base:.3f} x)", flush=True)
        settings = {"sae_type": variant, "top_k": K, "dict_size": DICT, "num_examples": examples}
        mine = train_one(training, held_out, settings)["fvu"]
        print(f"{variant:9s} sentence-sae defaults                            FVU {mine:.4f}", flush=True)
        for label, overrides in OUR_CHOICES.items():
            row = train_one(training, held_out, {**settings, **overrides})
            print(f"{variant:9s}   with {label:44s} FVU {row['fvu']:.4f}  L0 {row['l0']:.1f}  "
                  f"({row['fvu'] / mine:.3f} x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encode_backend", default="torch")
    parser.add_argument("--examples", type=int, default=EXAMPLES, help="training examples (a smaller smoke run)")
    parser.add_argument("--ablate", action="store_true", help="switch SAELens's choices one at a time instead")
    parser.add_argument("--variants", default="topk,batchtopk", help="with --ablate: which variants")
    parser.add_argument("--wide", action="store_true",
                        help="6,144 features on the first 20,000 Debian descriptions (2,000 held out), 100,000 examples")
    args = parser.parse_args()
    if args.wide:
        training, held_out = first_rows_split(SHARED / "debian_descriptions.jsonl.gz", 20_000, 2_000)
        return side_by_side(training, held_out, WIDE_DICT, WIDE_EXAMPLES, [("SAELens at our settings", True)])
    path, _ = CORPORA["wordnet-all"]
    embeddings = corpus_embeddings(path, args.encode_backend)
    order = np.random.default_rng(0).permutation(len(embeddings))
    training = torch.from_numpy(embeddings[order[5_000:45_000]])
    held_out = torch.from_numpy(embeddings[np.sort(order[:5_000])])
    if args.ablate:
        return ablate(training, held_out, args.examples, args.variants.split(","))
    side_by_side(training, held_out, DICT, args.examples, [("SAELens defaults", False), ("SAELens at our settings", True)])


def side_by_side(training: torch.Tensor, held_out: torch.Tensor, dict_size: int, examples: int,
                 peers: list[tuple[str, bool]]) -> None:
    for variant in ("topk", "batchtopk"):
        mine = train_one(training, held_out, {"sae_type": variant, "top_k": K, "dict_size": dict_size,
                                              "num_examples": examples})
        print(f"{variant:9s} sentence-sae defaults        FVU {mine['fvu']:.4f}  L0 {mine['l0']:.1f}  "
              f"dead {mine['dead']:.3f}  (1.000 x ours)", flush=True)
        for label, ours in peers:
            peer = saelens_run(training, held_out, variant, ours, examples, dict_size=dict_size)
            print(f"{variant:9s} {label:28s} FVU {peer.fvu:.4f}  L0 {peer.l0:.1f}  dead {peer.dead:.3f}  "
                  f"({peer.fvu / mine['fvu']:.3f} x ours)", flush=True)


if __name__ == "__main__":
    main()
