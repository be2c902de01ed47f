"""Decision: `pre_act_coeff` defaults to 3e-5 on every corpus and budget, not only where it was found.

Does JumpReLU's pre-activation loss (pre_act_coeff) help on every corpus and budget?

At the panel's small points (python-docs, Debian 5,000 and WordNet 5,000 when ../shared/data has
them; one pass and the defaults; target L0 16 and 32; dict_size 1,536) trains jumprelu with the
default pre_act_coeff and with it off (0), and prints held-out FVU and L0 of both and the FVU ratio
(with / without: below 1 is better).

    python -m benchmarks.studies.jumprelu_preact
"""

from __future__ import annotations

import os
from pathlib import Path


from benchmarks import panel  # noqa: E402

from sentence_sae import SAEConfig  # noqa: E402


def main() -> None:
    default = SAEConfig().pre_act_coeff
    jobs = []
    for corpus in ("python-docs", "debian-5k", "wordnet-5k"):
        path, size = panel.CORPORA[corpus]
        if corpus != "python-docs" and not Path(path).exists():
            print(f"skipped {corpus}: no {path}")
            continue
        training, held_out = panel.split(panel.corpus_embeddings(path, "fast"), size)
        for budget, settings in panel.budgets().items():
            for target in (16, 32):
                for coeff in (0.0, default):
                    jobs.append({"corpus": corpus, "budget": budget, "run": f"jumprelu L0 {target} pre_act {coeff:g}",
                                 "training": training, "held_out": held_out,
                                 "settings": {**settings, "sae_type": "jumprelu", "top_k": target,
                                              "pre_act_coeff": coeff}})
    rows = panel.run_all(jobs, os.cpu_count() or 1, None)
    print(f"\n| corpus | budget | target L0 | FVU off | FVU {default:g} | ratio | L0 off | L0 {default:g} |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for off, on in zip(rows[0::2], rows[1::2]):
        ratios.append(on["fvu"] / off["fvu"])
        target = off["run"].split()[2]
        print(f"| {off['corpus']} | {off['budget']} | {target} | {off['fvu']:.4f} | {on['fvu']:.4f} | "
              f"{ratios[-1]:.3f} | {off['l0']:.2f} | {on['l0']:.2f} |")
    print(f"\nFVU ratio (with / without): worst {max(ratios):.3f}, best {min(ratios):.3f}")


if __name__ == "__main__":
    main()
