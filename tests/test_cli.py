from __future__ import annotations

import subprocess
import sys

import pytest

from grape.cli import STAGES, build_stage_parser, main


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
