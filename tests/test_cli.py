from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from grape.cli import STAGES, SUBCOMMANDS, build_stage_parser, failure_line, main


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_has_help(stage, capsys):
    with pytest.raises(SystemExit) as exc:
        main([stage, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"grape {stage}" in out


def test_python_m_grape_lists_stages():
    out = subprocess.run([sys.executable, "-m", "grape", "--help"], capture_output=True, text=True, check=True).stdout
    for stage in STAGES:
        assert stage in out
    for stage, commands in SUBCOMMANDS.items():
        for command in commands:
            assert f"{stage} {command}" in out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_subcommands_are_the_stage_modules_commands(stage):
    module = importlib.import_module(f"grape.stages.{stage}")
    assert tuple(getattr(module, "COMMANDS", {})) == SUBCOMMANDS.get(stage, ())
    if not hasattr(module, "COMMANDS"):
        assert {"FILES", "Options", "run"} <= set(vars(module))


@pytest.mark.parametrize(("stage", "command"), [(s, c) for s, cs in SUBCOMMANDS.items() for c in cs])
def test_every_subcommand_has_help_like_a_stage(stage, command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([stage, command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"grape {stage} {command}" in out
    for part in ("files:", "options (the config section of the same name):", "--log-level", "--threads"):
        assert part in out


def test_dataset_download_keeps_its_flags():
    parser, _ = build_stage_parser("dataset")
    ns = parser.parse_args(["download", "--name", "n", "--url", "https://x.org/f", "--out", "a", "--sha256", "ab",
                            "--retries", "2", "--max-backoff", "0.5"])
    assert (ns.command, ns.name, ns.url, ns.sha256, ns.md5, ns.retries, ns.max_backoff) == (
        "download", "n", "https://x.org/f", "ab", None, 2, 0.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["download", "--url", "https://x.org/f", "--out", "a"])  # --name is required


def test_options_are_typed():
    parser, _ = build_stage_parser("graph")
    ns = parser.parse_args(["--descriptions", "d", "--text", "t", "--dna", "n", "--out", "o",
                            "--top-k", "5", "--biotype-groups", '{"lncRNA": "lnc"}'])
    assert ns.top_k == 5
    assert ns.biotype_groups == {"lncRNA": "lnc"}


def test_boolean_options():
    parser, _ = build_stage_parser("embed")
    base = ["--descriptions", "d", "--sequences", "s", "--cache-dir", "c", "--text-out", "t", "--dna-out", "n"]
    assert parser.parse_args(base).kmer_canonical is True
    assert parser.parse_args([*base, "--no-kmer-canonical"]).kmer_canonical is False


def test_unknown_stage_is_refused():
    with pytest.raises(SystemExit):
        main(["fly"])


def test_failing_stage_ends_stderr_with_one_line(tmp_path):
    missing = tmp_path / "missing.h5ad"
    result = subprocess.run([sys.executable, "-m", "grape", "split", "--dataset", str(missing), "--out",
                             str(tmp_path / "split.tsv")], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"grape split failed: DatasetError: dataset file not found: {missing}"
    assert "Traceback (most recent call last)" in result.stderr  # the traceback stays in the log above it
    assert not (tmp_path / "split.tsv").exists()


def test_failure_line_folds_a_message_onto_one_line(capsys):
    assert main(["split", "--dataset", "d.h5ad", "--out", "s.tsv", "--kind", "random"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "grape split failed: ValueError: split.kind must be one of simulation, table, logo, not 'random'"
    assert failure_line("x", ValueError("a\nb  c")) == "grape x failed: ValueError: a b c"


def test_failing_subcommand_names_itself(tmp_path, capsys):
    missing = tmp_path / "missing.zip"
    assert main(["dataset", "extract", "--name", "x", "--archive", str(missing), "--out", str(tmp_path / "o")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"grape dataset extract failed: DatasetError: dataset 'x', archive {missing}: file not found"
