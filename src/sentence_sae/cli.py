"""The ``sentence-sae`` command line.

Every config key is an option (``--key value``) whose help is the field's docstring; ``--config
FILE`` reads YAML or JSON first, options override it. Bad input ends with one line on stderr and a
non-zero exit; results end with one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from .config import (SAEConfig, coerce_value, field_help, from_mapping, load_config_file, metavar_of, section_key,
                     sections, shown_default, unknown_key_message)
from .errors import ConfigError, SentenceSAEError, TrainingStopped

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line instead of usage text plus the error."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see '{self.prog} --help')")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Every config key as --key, grouped by the config's sections as in docs/configuration.md."""
    helps = field_help()
    for title, keys in sections().items():
        group = parser.add_argument_group(f"{title} (config keys; in a --config file at the top level or under "
                                          f"'{section_key(title)}:')")
        for key in keys:
            group.add_argument(
                f"--{key}",
                dest=key,
                default=argparse.SUPPRESS,
                metavar=metavar_of(key),
                help=f"{helps.get(key, '')} (default: {shown_default(key)})".replace("%", "%%"),  # argparse formats help with %
            )
    parser.add_argument("--config", dest="config_file", default=None, metavar="FILE",
                        help="YAML or JSON file of config keys; options given on the command line win")


RUN_COMMANDS = {"eval", "explain", "features", "plot", "push", "compare", "diff", "hypotheses", "search", "export"}
EXPORT_FORMATS = ("sparse-encoder",)


def add_reading_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The options of the commands that read a dataset: which one, and what eval reads beside it."""
    if command in ("eval", "explain", "diff", "hypotheses", "search"):
        parser.add_argument("--dataset_path", default=None,
                            help="another dataset to read (default: the run's own; for eval its held-out texts)")
        parser.add_argument("--text_column", default=None, help="its text column (default: the run's)")
        parser.add_argument("--num_examples", type=int, default=None,
                            help="texts to read (eval default: the run's num_eval_examples; explain: all)")
    if command == "eval":
        parser.add_argument("--label_column", default=None,
                            help="a column of labels: adds linear probes and feature label purity")
        parser.add_argument("--retrieval", default=None, metavar="PAIRS",
                            help="a dataset of (query, document) pairs: adds MRR@10, nDCG@10 and recall@1/@10 of the "
                                 "dense embeddings, their reconstructions and the codes as sparse vectors")
        parser.add_argument("--query_column", default="query", help="the pairs' query column (default query)")
        parser.add_argument("--document_column", default="document", help="the pairs' document column (default document)")


def add_run_options(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by sentence-sae train")
    if command == "features":
        parser.add_argument("text", metavar="TEXT", help="the text whose features to show")
    if command == "compare":
        parser.add_argument("text_a", metavar="TEXT_A", help="the first text")
        parser.add_argument("text_b", metavar="TEXT_B", help="the second text")
    if command == "search":
        parser.add_argument("query", metavar="QUERY", nargs="?", default=None, help="the text to search for by meaning")
        parser.add_argument("--feature", type=int, default=None, metavar="ID",
                            help="instead of a query: list the texts where this feature fires most")
        parser.add_argument("--boost", action="append", default=[], metavar="F[:WEIGHT]",
                            help="steer the query toward feature F: its activation raised to WEIGHT (default 1) x its "
                                 "largest on the corpus; repeatable")
        parser.add_argument("--suppress", action="append", default=[], metavar="F", type=int,
                            help="steer the query away from feature F and leave out the texts it fires on; repeatable")
    if command in ("features", "compare", "search", "diff"):
        top = 20 if command == "diff" else 10
        parser.add_argument("--top", type=int, default=top,
                            help=f"how many {'texts' if command == 'search' else 'features'} to show (default {top})")
    if command in ("compare", "search"):
        parser.add_argument("--json", action="store_true", help="print the result as one JSON line, not a table")
    if command == "diff":
        parser.add_argument("--a", required=True, metavar="A", help="a dataset, or a value of --label_column")
        parser.add_argument("--b", required=True, metavar="B", help="another dataset, or another value of --label_column")
        parser.add_argument("--label_column", default=None,
                            help="compare two values of this column of one dataset (the run's, or --dataset_path)")
    if command == "hypotheses":
        parser.add_argument("--target_column", required=True,
                            help="the outcome: a column with two values (binary) or numbers")
        parser.add_argument("--max_features", type=int, default=20,
                            help="most features the sparse model may select (default 20)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the selection/validation split (default 0)")
    if command in ("diff", "hypotheses"):
        parser.add_argument("--fdr", type=float, default=0.05, help="false discovery rate to control (default 0.05)")
    add_reading_options(parser, command)
    if command == "explain":
        parser.add_argument("--top_n", type=int, default=10, help="top texts kept per feature (default 10)")
        parser.add_argument("--highlight", action="store_true",
                            help="add each word's contribution to the feature in its top 3 texts (slower)")
    if command == "features":
        parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                            help="color each word by its contribution to the feature (default: auto, on a terminal)")
    if command == "push":
        parser.add_argument("repo_id", metavar="REPO_ID", help="hub repository, e.g. user/minilm-topk-sae")
        parser.add_argument("--private", action="store_true", help="create the repository as private")
    if command == "export":
        parser.add_argument("--to", required=True, choices=EXPORT_FORMATS, help="the format: sparse-encoder "
                            "(a sentence-transformers SparseEncoder folder)")
        parser.add_argument("out", metavar="OUT", help="a new folder to write")
    if command not in ("plot", "push", "export"):
        parser.add_argument("--device", default=None, help="torch device (default cpu)")


def config_from_args(args: argparse.Namespace, extra: Sequence[str]) -> SAEConfig:
    """defaults < --config file < --key value options."""
    for token in extra:
        if token.startswith("--"):
            raise ConfigError(unknown_key_message(token[2:].split("=", 1)[0]))
        raise ConfigError(f"unexpected argument '{token}'; options take the form --key value")
    values: dict[str, Any] = {}
    if args.config_file:
        values.update(load_config_file(args.config_file))
    for f in fields(SAEConfig):
        if hasattr(args, f.name):
            values[f.name] = coerce_value(f.name, getattr(args, f.name))
    return from_mapping(values)


# ----------------------------------------------------------------------------------------------
# Commands


def cmd_train(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    from .training import resume, train

    cfg = config_from_args(args, extra)
    if args.resume:
        given = [f.name for f in fields(SAEConfig) if hasattr(args, f.name)]
        if given or args.config_file:
            raise ConfigError(f"--resume continues a run with its own config; drop --{(given or ['config'])[0]}")
        return resume(args.resume).summary()
    return train(cfg).summary()


def cmd_embed(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    from .training import embed

    return embed(config_from_args(args, extra))


def cmd_sweep(args: argparse.Namespace, extra: Sequence[str]) -> list[dict[str, Any]]:
    from .sweep import parse_grid, sweep

    results = sweep(config_from_args(args, extra), parse_grid(args.grid or []))
    return [result.summary() for result in results]


def cmd_eval(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    from .evaluation import evaluate_run

    return evaluate_run(args.run_dir, dataset_path=args.dataset_path, num_examples=args.num_examples,
                        label_column=args.label_column, text_column=args.text_column, device=args.device,
                        retrieval=args.retrieval, query_column=args.query_column, document_column=args.document_column)


def cmd_explain(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    from .analysis.explain import explain_run

    return explain_run(args.run_dir, dataset_path=args.dataset_path, num_examples=args.num_examples,
                       text_column=args.text_column, top_n=args.top_n, device=args.device, highlight=args.highlight)


def cmd_features(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    from .analysis.lookup import colored_words, top_features

    result = top_features(args.run_dir, args.text, args.top, device=args.device)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    for feature in result["features"]:
        print(f"#{feature['id']:<6} {feature['activation']:8.4f}  {feature['label']}")
        if color:
            print("        " + colored_words(args.text, feature["words"]))
    return result


def cmd_compare(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any] | None:
    from .analysis.compare import compare_table, compare_texts

    result = compare_texts(args.run_dir, args.text_a, args.text_b, args.top, device=args.device)
    if args.json:
        return result
    print(compare_table(result))
    return None


def cmd_diff(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    from .analysis.diff import diff_run

    return diff_run(args.run_dir, args.a, args.b, dataset_path=args.dataset_path, label_column=args.label_column,
                    text_column=args.text_column, num_examples=args.num_examples, fdr=args.fdr, top=args.top,
                    device=args.device)


def cmd_hypotheses(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    from .analysis.hypotheses import hypotheses_run

    return hypotheses_run(args.run_dir, args.target_column, dataset_path=args.dataset_path, text_column=args.text_column,
                          num_examples=args.num_examples, fdr=args.fdr, max_features=args.max_features, seed=args.seed,
                          device=args.device)


def parse_boost(text: str) -> tuple[int, float]:
    """--boost F or F:WEIGHT -> (feature, weight)."""
    feature, _, weight = text.partition(":")
    try:
        return int(feature), float(weight) if weight else 1.0
    except ValueError:
        raise ConfigError(f"--boost takes a feature id and an optional weight, as 12 or 12:2.5; got '{text}'") from None


def cmd_search(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any] | None:
    from .analysis.search import feature_search, search_run

    if (args.query is None) == (args.feature is None):
        raise ConfigError("give either a QUERY to search by meaning or --feature ID, not both or neither")
    if args.feature is not None and (args.boost or args.suppress):
        raise ConfigError("--boost and --suppress steer a QUERY; --feature lists one feature's texts without one")
    if args.feature is not None:
        result = feature_search(args.run_dir, args.feature, args.top, args.num_examples, device=args.device)
    else:
        result = search_run(args.run_dir, args.query, args.top, args.num_examples, device=args.device,
                            boost=dict(map(parse_boost, args.boost)), suppress=args.suppress)
    if args.json:
        return result
    for match in result["matches"]:
        score = f"{match['cosine']:.4f}" if "cosine" in match else f"{match['activation']:.4f}"
        shared = "; ".join(f"#{f['id']} {f['label']}" for f in match.get("features", []))
        print(f"{score}  {match['text'][:160]}" + (f"\n        shared: {shared}" if shared else ""))
    return None


def cmd_plot(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    from .checkpoint import SPARSITY_FILE
    from .plots import firing_histogram, training_curves

    run_dir = Path(args.run_dir)
    drawn: dict[str, Any] = {"plot": str(training_curves(run_dir))}
    if (run_dir / SPARSITY_FILE).exists():
        drawn["firing_frequency"] = str(firing_histogram(run_dir))
    else:
        print(f"note: {run_dir / SPARSITY_FILE} is missing (a run saved before sentence-sae wrote it): the "
              "firing-frequency histogram is not drawn", file=sys.stderr)
    return drawn


def cmd_push(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    from .hub import push_run

    return push_run(args.run_dir, args.repo_id, private=args.private)


def cmd_export(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    from .export import export_sparse_encoder

    return export_sparse_encoder(args.run_dir, args.out)


def cmd_keys(args: argparse.Namespace, extra: Sequence[str]) -> None:
    from .config import config_table_markdown

    print(config_table_markdown())


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace, Sequence[str]], Any], str]] = {
    "train": (cmd_train, "train an SAE on sentence embeddings of a dataset"),
    "embed": (cmd_embed, "encode a dataset into the embedding cache that train reads"),
    "sweep": (cmd_sweep, "train a grid of SAEs from one pass of embeddings (--grid key=v1,v2 ...)"),
    "eval": (cmd_eval, "evaluate a trained SAE: reconstruction, sparsity, retrieval, probes; writes eval.json"),
    "explain": (cmd_explain, "label every feature and write features.jsonl, families.json and browser/"),
    "features": (cmd_features, "print the top features of a text with their labels and activations"),
    "compare": (cmd_compare, "why two texts are similar: the features behind the cosine of their reconstructions"),
    "diff": (cmd_diff, "features that fire more often in one corpus (or label) than another; writes an HTML report"),
    "hypotheses": (cmd_hypotheses, "features that predict an outcome column, each tested on texts it was not selected "
                                   "on; writes an HTML report"),
    "search": (cmd_search, "nearest texts of the run's corpus to a query, or the texts where a feature fires most"),
    "plot": (cmd_plot, "draw a run's training curves (training_curves.png) and the log10 histogram of its "
                       "features' firing frequencies in training (firing_frequency.png)"),
    "push": (cmd_push, "upload a run's SAE with a model card to the Hugging Face hub"),
    "export": (cmd_export, "write the SAE as a sentence-transformers SparseEncoder folder (--to sparse-encoder OUT)"),
    "keys": (cmd_keys, "print the table of config keys (markdown)"),
}
CONFIG_COMMANDS = {"train", "embed", "sweep"}


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="sentence-sae",
        description="Train sparse autoencoders on Sentence-BERT embeddings and read their features.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name, (_, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        if name in CONFIG_COMMANDS:
            add_config_options(sub)
        if name == "train":
            sub.add_argument("--resume", metavar="RUN_DIR", default=None,
                             help="continue the run in RUN_DIR from its last checkpoint, exactly")
        if name == "sweep":
            sub.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                             help="a config key and its values; several --grid give their product")
        if name in RUN_COMMANDS:
            add_run_options(sub, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        argv = ["train"]  # the main job on the built-in defaults
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_BAD_INPUT
        if extra and args.command not in CONFIG_COMMANDS:
            raise ConfigError(f"unknown option '{extra[0]}' for {args.command} (see 'sentence-sae {args.command} --help')")
        handler = COMMANDS[args.command][0]
        result = handler(args, extra)
    except TrainingStopped as exc:
        print(f"sentence-sae: {exc}", file=sys.stderr)
        return exc.exit_code
    except SentenceSAEError as exc:
        print(f"sentence-sae: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("sentence-sae: interrupted", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # in a data-parallel run, rank 0 reports
    for line in result if isinstance(result, list) else [result] if result is not None else []:
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
