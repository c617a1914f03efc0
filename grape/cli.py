"""Command line: ``python -m grape <stage> [options]`` (also installed as ``grape``).

Each stage module declares its file arguments in ``CLI_PATHS`` and its tunable
options as the frozen dataclass ``Options`` (the same keys as the stage's section of
``config.yaml``); this module turns both into argparse flags and calls
``module.run(options=..., **paths)``. The stage module is imported only when its
stage runs, so ``grape annotate`` never imports torch.
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
from pathlib import Path

from grape import __version__

STAGES: dict[str, str] = {
    "preflight": "check the dataset, split table and configuration in seconds, before any expensive stage",
    "simulate": "simulate the demo organism (GTF, FASTA, descriptions) and its Perturb-seq h5ad",
    "annotate": "gene table and sequences from an Ensembl GTF + cDNA/ncRNA FASTA via pyensembl",
    "describe": "one description text per gene, with its source",
    "embed": "text (language model) and DNA (k-mer profile) features per gene, cached by content",
    "graph": "assemble the biotype heterograph (PyTorch Geometric HeteroData)",
    "split": "seeded train / validation / test split: GEARS simulation, a user table, or leave one gene out",
    "train": "train GRAPE (or an ablation) on the training conditions; export its learned network",
    "network": "precision at k of learned and prior networks against a true network (demo)",
    "evaluate": "GEARS metrics of the model and baselines on the test conditions",
    "report": "Markdown summary of the metrics",
    "ensembl": "download an Ensembl release's GTF / cDNA / ncRNA FASTA (reliable, resumable)",
    "dataset": "download, extract or subset a perturbation dataset (download | extract | subset)",
}

# Stages whose module parses its own command line (sub-commands): `grape <stage> ...` hands
# the arguments to ``module.main``.
OWN_PARSER: dict[str, str] = {"ensembl": "grape.stages.ensembl", "dataset": "grape.stages.dataset"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_option(parser: argparse.ArgumentParser, field: dataclasses.Field, hints: dict) -> None:
    hint = hints[field.name]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    help_text = f"{field.metadata.get('help', '')} (default: {default!r})"
    kwargs: dict = {"default": default, "help": help_text.replace("%", "%%"), "dest": field.name}
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


def build_stage_parser(stage: str) -> tuple[argparse.ArgumentParser, types.ModuleType]:
    """Return the argparse parser of one stage and the stage's module."""
    module = importlib.import_module(f"grape.stages.{stage}")
    parser = argparse.ArgumentParser(
        prog=f"grape {stage}",
        description=(module.__doc__ or STAGES[stage]).strip().splitlines()[0],
    )
    files = parser.add_argument_group("files")
    for name, spec in module.CLI_PATHS.items():
        files.add_argument(_flag(name), dest=name, type=Path, required=spec.required,
                           nargs="+" if spec.many else None, help=spec.help.replace("%", "%%"))
    options_cls = module.Options
    hints = typing.get_type_hints(options_cls)
    group = parser.add_argument_group("options (the config section of the same name)")
    for field in dataclasses.fields(options_cls):
        _add_option(group, field, hints)
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: 0, torch's choice)")
    return parser, module


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grape",
        description="GRAPE perturbation-response pipeline: run one stage.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(f"  {k:<9} {v}" for k, v in STAGES.items())
        + "\n\n`grape <stage> --help` lists a stage's files and options.",
    )
    parser.add_argument("--version", action="version", version=f"grape {__version__}")
    parser.add_argument("stage", choices=list(STAGES), help="the stage to run")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``grape`` and ``python -m grape``.

    A stage that raises logs the traceback, then ends stderr with the one line
    ``grape <stage> failed: <ExceptionType>: <message>`` and returns 1.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0].startswith("-"):
        top.parse_args(argv or ["--help"])
        return 0
    stage = argv[0]
    if stage not in STAGES:
        top.parse_args(argv)  # exits with argparse's "invalid choice" message
    try:
        return _run_stage(stage, argv[1:])
    except Exception as exc:  # noqa: BLE001 - every failure of a stage ends in the one line below
        if not logging.getLogger().handlers:
            logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        logging.getLogger("grape").error("grape %s failed", stage, exc_info=True)
        sys.stderr.flush()
        sys.stderr.write(failure_line(stage, exc) + "\n")
        sys.stderr.flush()
        return 1


def failure_line(stage: str, exc: BaseException) -> str:
    """``grape <stage> failed: <ExceptionType>: <message>`` on one line (newlines of the message folded)."""
    message = " ".join(str(exc).split()) or repr(exc)
    return f"grape {stage} failed: {type(exc).__name__}: {message}"


def _run_stage(stage: str, args: list[str]) -> int:
    if stage in OWN_PARSER:
        return int(importlib.import_module(OWN_PARSER[stage]).main(args) or 0)
    parser, module = build_stage_parser(stage)
    ns = vars(parser.parse_args(args))
    logging.basicConfig(
        level=ns.pop("log_level").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("datacache").setLevel(logging.WARNING)  # it logs every SQL statement at INFO
    threads = ns.pop("threads")
    if threads > 0 and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    option_names = {f.name for f in dataclasses.fields(module.Options)}
    logging.getLogger("grape").info("grape %s %s", __version__, stage)
    options = module.Options(**{k: ns.pop(k) for k in list(ns) if k in option_names})
    module.run(options=options, **ns)
    return 0
