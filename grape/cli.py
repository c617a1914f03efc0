"""Command line: ``python -m grape <stage> [command] [options]`` (also installed as ``grape``).

Every stage module (:mod:`grape.stages`) declares its file arguments in ``FILES`` (a dict of
:class:`~grape.stages.PathArg`) and its tunable options as the frozen dataclass ``Options``
(the same keys as the stage's section of ``config.yaml``), and ``run``; a stage with several
steps declares ``COMMANDS`` (one :class:`~grape.stages.Command` each) instead. This module is
the one parser builder: it turns files and options into argparse flags, the same way for
every stage and sub-command (a ``files`` group, an ``options`` group, ``--log-level`` and
``--threads``), and calls ``run(options=..., **paths)``. The stage module is imported only
when its stage runs, so ``grape annotate`` never imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path

from grape import __version__
from grape.stages import Command, PathArg

STAGES: dict[str, str] = {
    "preflight": "check the dataset, split table and configuration in seconds, before any expensive stage",
    "simulate": "simulate the demo organism (GTF, FASTA, descriptions) and its Perturb-seq h5ad",
    "annotate": "gene table and sequences from an Ensembl GTF + cDNA/ncRNA FASTA via pyensembl",
    "describe": "one description text per gene, with its source",
    "embed": "text (language model) and DNA (k-mer profile) features per gene, cached by content",
    "graph": "assemble the biotype heterograph (the tensors the model reads) for one graph variant",
    "split": "seeded train / validation / test split: GEARS simulation, a user table, or leave one gene out",
    "train": "train GRAPE (or an ablation) on the training conditions; export its learned network",
    "network": "precision at k of learned and prior networks against a true network (demo)",
    "evaluate": "GEARS metrics of the model and baselines on the test conditions",
    "aggregate": "results over repeated splits (split.seeds): mean per model, model minus each baseline with intervals",
    "report": "Markdown summary of the metrics",
    "ensembl": "download an Ensembl release's GTF / cDNA / ncRNA FASTA (reliable, resumable)",
    "dataset": "download, extract or subset a perturbation dataset",
}

#: The sub-commands of the stages that have several steps, as their stage module's ``COMMANDS``
#: names them (tests/test_cli.py checks the two agree); listed here so that ``grape --help``
#: imports no stage.
SUBCOMMANDS: dict[str, tuple[str, ...]] = {"dataset": ("download", "extract", "subset")}

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_option(parser: argparse._ActionsContainer, field: dataclasses.Field, hints: dict) -> None:
    """One flag per option field: typed from its annotation, help from ``metadata['help']``.

    A field without a default is a required flag.
    """
    hint = hints[field.name]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = dataclasses.MISSING
    help_text = field.metadata.get("help", "")
    kwargs: dict = {"dest": field.name}
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
        help_text = f"{help_text} (default: {default!r})"
    kwargs["help"] = help_text.replace("%", "%%")
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin in (dict, typing.Mapping) or hint is dict:
        kwargs["type"] = json.loads
        kwargs["metavar"] = "JSON"
    elif origin in (list, tuple):
        kwargs["nargs"] = "*"
        kwargs["type"] = args[0] if args else str
    elif hint in (int, float, str):
        kwargs["type"] = hint
    else:
        kwargs["type"] = str
    parser.add_argument(_flag(field.name), **kwargs)


def commands_of(module: types.ModuleType) -> dict[str | None, Command]:
    """The commands of a stage module: its ``COMMANDS``, or ``{None: Command(FILES, Options, run)}``."""
    commands = getattr(module, "COMMANDS", None)
    if commands is not None:
        return dict(commands)
    return {None: Command(files=module.FILES, options=module.Options, run=module.run)}


def add_command_arguments(parser: argparse.ArgumentParser, command: Command) -> None:
    """The arguments of one command: its files, its options, ``--log-level`` and ``--threads``."""
    files = parser.add_argument_group("files")
    spec: PathArg
    for name, spec in command.files.items():
        files.add_argument(_flag(name), dest=name, type=Path, required=spec.required,
                           nargs="+" if spec.many else None, help=spec.help.replace("%", "%%"))
    hints = typing.get_type_hints(command.options)
    group = parser.add_argument_group("options (the config section of the same name)")
    for field in dataclasses.fields(command.options):
        _add_option(group, field, hints)
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: 0, torch's choice)")


def _summary(module: types.ModuleType, stage: str) -> str:
    return (module.__doc__ or STAGES[stage]).strip().splitlines()[0]


def build_stage_parser(stage: str) -> tuple[argparse.ArgumentParser, types.ModuleType]:
    """Return the argparse parser of one stage (with a sub-parser per command, if it has several) and its module."""
    module = importlib.import_module(f"grape.stages.{stage}")
    parser = argparse.ArgumentParser(prog=f"grape {stage}", description=_summary(module, stage))
    commands = commands_of(module)
    if list(commands) == [None]:
        add_command_arguments(parser, commands[None])
        return parser, module
    sub = parser.add_subparsers(dest="command", required=True, metavar="command",
                                title="commands (`grape %s <command> --help` lists its files and options)" % stage)
    for name, command in commands.items():
        child = sub.add_parser(name, prog=f"grape {stage} {name}", help=command.help,
                               description=command.help or _summary(module, stage))
        add_command_arguments(child, command)
    return parser, module


def _top_parser() -> argparse.ArgumentParser:
    lines = []
    for name, text in STAGES.items():
        lines.append(f"  {name:<9} {text}")
        if name in SUBCOMMANDS:
            lines.append(f"  {'':<9}   commands: {', '.join(f'{name} {c}' for c in SUBCOMMANDS[name])}")
    parser = argparse.ArgumentParser(
        prog="grape",
        description="GRAPE perturbation-response pipeline: run one stage.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(lines)
        + "\n\n`grape <stage> --help` (`grape <stage> <command> --help`) lists a stage's files and options.",
    )
    parser.add_argument("--version", action="version", version=f"grape {__version__}")
    parser.add_argument("stage", choices=list(STAGES), help="the stage to run")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``grape`` and ``python -m grape``.

    A stage that raises logs the traceback, then ends stderr with the one line
    ``grape <stage> failed: <ExceptionType>: <message>`` (``grape <stage> <command> failed: ...``
    for a sub-command) and returns 1.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0].startswith("-"):
        top.parse_args(argv or ["--help"])
        return 0
    stage = argv[0]
    if stage not in STAGES:
        top.parse_args(argv)  # exits with argparse's "invalid choice" message
    label = f"{stage} {argv[1]}" if len(argv) > 1 and argv[1] in SUBCOMMANDS.get(stage, ()) else stage
    try:
        return _run_stage(stage, argv[1:])
    except Exception as exc:  # noqa: BLE001 - every failure of a stage ends in the one line below
        if not logging.getLogger().handlers:
            logging.basicConfig(format=LOG_FORMAT, stream=sys.stderr)
        logging.getLogger("grape").error("grape %s failed", label, exc_info=True)
        sys.stderr.flush()
        sys.stderr.write(failure_line(label, exc) + "\n")
        sys.stderr.flush()
        return 1


def failure_line(stage: str, exc: BaseException) -> str:
    """``grape <stage> failed: <ExceptionType>: <message>`` on one line (newlines of the message folded)."""
    message = " ".join(str(exc).split()) or repr(exc)
    return f"grape {stage} failed: {type(exc).__name__}: {message}"


def run_command(command: Command, ns: Mapping[str, typing.Any], *, label: str) -> None:
    """Set up logging and threads from the parsed ``ns``, build the options, run the command."""
    ns = dict(ns)
    logging.basicConfig(level=str(ns.pop("log_level")).upper(), format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("datacache").setLevel(logging.WARNING)  # it logs every SQL statement at INFO
    logging.getLogger("grape").info("grape %s %s", __version__, label)
    threads = ns.pop("threads")
    if threads > 0 and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    option_names = {f.name for f in dataclasses.fields(command.options)}
    options = command.options(**{k: ns.pop(k) for k in list(ns) if k in option_names})
    command.run(options=options, **ns)


def _run_stage(stage: str, args: list[str]) -> int:
    parser, module = build_stage_parser(stage)
    ns = vars(parser.parse_args(args))
    name = ns.pop("command", None)
    run_command(commands_of(module)[name], ns, label=f"{stage} {name}" if name else stage)
    return 0
