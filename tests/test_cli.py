from __future__ import annotations

import subprocess
import sys

import pytest

from grape.cli import STAGES, build_stage_parser, failure_line, main


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
