"""The ``sentence-sae`` command line.

Every config key is an option (``--key value``) whose help is the field's docstring; ``--config
FILE`` reads YAML or JSON first, options override it. Bad input ends with one line on stderr and a
non-zero exit; results end with one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any, Callable, NoReturn, Sequence

from .config import SAEConfig, coerce_value, field_help, from_mapping, load_config_file, unknown_key_message
from .errors import ConfigError, SentenceSAEError

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line instead of usage text plus the error."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see '{self.prog} --help')")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config keys (also settable in the --config file)")
    defaults = SAEConfig()
    helps = field_help()
    for f in fields(SAEConfig):
        default = getattr(defaults, f.name)
        group.add_argument(
            f"--{f.name}",
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar=f.type.replace(" | None", "").upper() if isinstance(f.type, str) else "VALUE",
            help=f"{helps.get(f.name, '')} (default: {default})",
        )
    parser.add_argument("--config", dest="config_file", default=None, metavar="FILE",
                        help="YAML or JSON file of config keys; options given on the command line win")


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
    from .training import train

    cfg = config_from_args(args, extra)
    return train(cfg).summary()


def cmd_embed(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    from .training import embed

    return embed(config_from_args(args, extra))


def cmd_sweep(args: argparse.Namespace, extra: Sequence[str]) -> list[dict[str, Any]]:
    from .sweep import parse_grid, sweep

    results = sweep(config_from_args(args, extra), parse_grid(args.grid or []))
    return [result.summary() for result in results]


def cmd_keys(args: argparse.Namespace, extra: Sequence[str]) -> None:
    from .config import config_table_markdown

    print(config_table_markdown())


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace, Sequence[str]], Any], str]] = {
    "train": (cmd_train, "train an SAE on sentence embeddings of a dataset"),
    "embed": (cmd_embed, "encode a dataset into the embedding cache that train reads"),
    "sweep": (cmd_sweep, "train a grid of SAEs from one pass of embeddings (--grid key=v1,v2 ...)"),
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
        if name == "sweep":
            sub.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                             help="a config key and its values; several --grid give their product")
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
        handler = COMMANDS[args.command][0]
        result = handler(args, extra)
    except SentenceSAEError as exc:
        print(f"sentence-sae: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("sentence-sae: interrupted", file=sys.stderr)
        return 130
    for line in result if isinstance(result, list) else [result] if result is not None else []:
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
