"""The describe stage through Bio.Entrez against a loopback E-utilities server: faults, limits, resume, secrets."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from grape.annotation import describe
from grape.stages import describe as describe_stage
from grape.annotation.describe import Options
from grape.io.download import DownloadError
from grape.annotation.ncbi import NCBI_EUTILS
from tests.http_server import FakeEutils, FakeGene, LoopbackServer, html, stall, status, truncate

ESEARCH = FakeEutils.PATH + "esearch.fcgi"
ESUMMARY = FakeEutils.PATH + "esummary.fcgi"
N_GENES = 450
BATCH = 200


def fake_db() -> list[FakeGene]:
    genes = [FakeGene(str(1000 + i), f"GENE{i}", f"Summary of gene {i}.", f"gene {i}", (f"OLD{i}",))
             for i in range(N_GENES)]
    genes.append(FakeGene("9", "NOSUM", "", "no summary gene"))
    genes.append(FakeGene("10", "MOUSEONLY", "A mouse gene.", "m", (), taxid="10090"))
    return genes


def write_inputs(root: Path) -> dict[str, Path]:
    """A gene table as `grape annotate` writes it: Entrez ids for some, symbols, aliases, unmapped genes."""
    rows = []
    for i in range(N_GENES):
        symbol = f"OLD{i}" if i % 50 == 7 else f"GENE{i}"  # some datasets use an old symbol
        rows.append({"gene_id": f"ENSG{i:011d}", "gene_name": symbol, "dataset_name": symbol, "biotype": "protein_coding",
                     "entrez_id": str(1000 + i) if i % 3 == 0 else "", "description": f"ensembl text {i}",
                     "description_source": "ensembl"})
    rows.append({"gene_id": "ENSG99", "gene_name": "NOSUM", "dataset_name": "NOSUM", "biotype": "lncRNA",
                 "entrez_id": "", "description": "long non-coding thing", "description_source": "ensembl"})
    rows.append({"gene_id": "ENSG98", "gene_name": "MOUSEONLY", "dataset_name": "MOUSEONLY", "biotype": "lncRNA",
                 "entrez_id": "", "description": "", "description_source": ""})
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "genes.tsv", sep="\t", index=False)
    pd.DataFrame({"gene": ["GHOST"], "role": ["measured"], "reason": ["not in annotation"]}).to_csv(
        root / "missing.tsv", sep="\t", index=False)
    return {"genes": root / "genes.tsv", "missing": root / "missing.tsv"}


def options(server: LoopbackServer, **kw) -> Options:
    base = dict(email="grape@example.org", ncbi_url=server.url(FakeEutils.PATH), batch_size=BATCH,
                retries=4, backoff=0.01, max_backoff=1.0, timeout=0.5)
    return Options(**{**base, **kw})


def run_stage(server, root: Path, cache: Path, **kw) -> pd.DataFrame:
    paths = write_inputs(root)
    describe_stage.run(options=options(server, **kw), out=root / "out.tsv", ncbi_cache=cache, **paths)
    return pd.read_csv(root / "out.tsv", sep="\t", dtype=str, keep_default_na=False)


@pytest.fixture(autouse=True)
def fast_rate(monkeypatch):
    """An API key lets Bio.Entrez send 10 requests a second instead of 3 (the tests run faster)."""
    monkeypatch.setenv("NCBI_API_KEY", "test-key")


@pytest.fixture()
def server():
    with LoopbackServer() as srv:
        FakeEutils(fake_db()).install(srv)
        yield srv


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> tuple[pd.DataFrame, int]:
    """The reference: an uninterrupted run on a healthy server, and its request count."""
    root = tmp_path_factory.mktemp("clean")
    with pytest.MonkeyPatch.context() as patch, LoopbackServer() as srv:
        patch.setenv("NCBI_API_KEY", "test-key")
        FakeEutils(fake_db()).install(srv)
        out = run_stage(srv, root, root / "cache")
        return out, srv.count()


def test_descriptions_sources_and_mapping(clean_run):
    out, n_requests = clean_run
    out = out.set_index("gene")
    assert out.loc["GENE3", "description"] == "Summary of gene 3." and out.loc["GENE3", "source"] == "ncbi"
    assert out.loc["GENE3", "entrez_id"] == "1003"
    assert out.loc["OLD7", "description"] == "Summary of gene 7." and out.loc["OLD7", "entrez_id"] == "1007"
    # an NCBI record without a summary, and a gene of another species: the annotation's description, then the fallback
    assert out.loc["NOSUM", "source"] == "ensembl"
    assert out.loc["NOSUM", "description"] == "NOSUM: long non-coding thing. A lncRNA gene."
    assert out.loc["MOUSEONLY", "source"] == "fallback"
    assert out.loc["GHOST", "biotype"] == "unknown" and out.loc["GHOST", "source"] == "fallback"
    assert (out["source"] == "ncbi").sum() == N_GENES
    assert len(out) == N_GENES + 3


def test_batches_and_request_count(server, tmp_path):
    run_stage(server, tmp_path, tmp_path / "cache")
    summaries = [r for r in server.requests if r.path == ESUMMARY]
    sizes = [len(r.form()["id"][0].split(",")) for r in summaries]
    assert all(s <= BATCH for s in sizes) and max(sizes) == BATCH
    assert all(r.method == "POST" for r, s in zip(summaries, sizes) if s >= 200)  # long id lists go by POST
    # 150 known Entrez ids: 1 esummary; 303 symbols as [pref]: 2 esearch + 2 esummary; the 8 left
    # (6 old symbols, MOUSEONLY, GHOST) once more as [sym]: 1 esearch + 1 esummary for the aliases found
    assert server.count(ESEARCH) == 3 and server.count(ESUMMARY) == 4
    form = summaries[0].form()
    assert form["email"] == ["grape@example.org"] and form["tool"] == ["grape"]


@pytest.mark.parametrize("fault", [status(500), status(429, retry_after="1"), stall(0.8), truncate(), html()],
                         ids=["500", "429", "stalled", "truncated", "html200"])
def test_esummary_fault_is_retried_to_the_same_output(server, tmp_path, clean_run, fault):
    server.inject(ESUMMARY, fault)
    out = run_stage(server, tmp_path, tmp_path / "cache")
    pd.testing.assert_frame_equal(out, clean_run[0])
    assert server.count() == clean_run[1] + 1


def test_esearch_faults_are_retried_to_the_same_output(server, tmp_path, clean_run):
    server.inject(ESEARCH, status(503), status(429, retry_after="0"), stall(0.8), truncate(), html())
    out = run_stage(server, tmp_path, tmp_path / "cache", retries=5)
    pd.testing.assert_frame_equal(out, clean_run[0])
    assert server.count() == clean_run[1] + 5


def test_persistent_failure_names_url_and_genes_and_writes_nothing(server, tmp_path, monkeypatch):
    monkeypatch.setenv("NCBI_API_KEY", "TOPSECRETKEY")
    server.inject(ESUMMARY, *[status(502)] * 5)
    with pytest.raises(DownloadError) as info:
        run_stage(server, tmp_path, tmp_path / "cache")
    message = str(info.value)
    assert "esummary.fcgi" in message and "after 5 attempts" in message and "HTTP 502" in message
    assert "genes GENE0, GENE3, GENE6" in message  # the genes of the failed batch, by symbol
    assert "TOPSECRETKEY" not in message
    assert not (tmp_path / "out.tsv").exists()


def test_resume_sends_only_the_remaining_requests(tmp_path, clean_run):
    """The server dies after 3 requests; the rerun asks only what was not answered, same output."""
    with LoopbackServer() as srv:
        FakeEutils(fake_db()).install(srv)
        srv.fail_after = 3
        with pytest.raises(DownloadError):
            run_stage(srv, tmp_path, tmp_path / "cache", retries=1)
        assert not (tmp_path / "out.tsv").exists()
        answered = 3
        srv.fail_after = None
        before = srv.count()
        out = run_stage(srv, tmp_path, tmp_path / "cache")
        assert srv.count() - before == clean_run[1] - answered
    pd.testing.assert_frame_equal(out, clean_run[0])


def test_api_key_used_never_logged_or_written(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NCBI_API_KEY", "TOPSECRETKEY")
    server.inject(ESEARCH, status(500))
    with caplog.at_level(logging.DEBUG):
        run_stage(server, tmp_path, tmp_path / "cache")
    assert all(r.form().get("api_key") == ["TOPSECRETKEY"] for r in server.requests)  # sent to NCBI
    assert "TOPSECRETKEY" not in caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"TOPSECRETKEY" not in path.read_bytes(), path
    times = [r.time for r in server.requests]
    # the mean spacing (arrival jitter on a loaded machine does not accumulate over the run)
    assert (times[-1] - times[0]) / (len(times) - 1) >= 0.09  # at most 10 requests per second with a key


def test_rate_limit_without_key(server, tmp_path, monkeypatch):
    monkeypatch.delenv("NCBI_API_KEY", raising=False)
    run_stage(server, tmp_path, tmp_path / "cache")
    times = [r.time for r in server.requests]
    assert (times[-1] - times[0]) / (len(times) - 1) >= 0.30  # at most 3 requests per second
    assert all("api_key" not in r.form() for r in server.requests)


def test_bio_entrez_is_left_as_it_was(server, tmp_path):
    from Bio import Entrez

    before = (Entrez.urlopen, Entrez.email, Entrez.max_tries, Entrez.api_key)
    run_stage(server, tmp_path, tmp_path / "cache")
    assert (Entrez.urlopen, Entrez.email, Entrez.max_tries, Entrez.api_key) == before
    assert NCBI_EUTILS == "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"


def test_email_is_required_before_any_request(server, tmp_path):
    paths = write_inputs(tmp_path)
    with pytest.raises(ValueError, match="describe.email"):
        describe_stage.run(options=options(server, email=None), out=tmp_path / "out.tsv", ncbi_cache=tmp_path / "c", **paths)
    assert server.count() == 0


def test_user_table_takes_precedence_over_ncbi(server, tmp_path):
    paths = write_inputs(tmp_path)
    pd.DataFrame({"entrez_id": ["1004"], "description": ["curated text"]}).to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    describe_stage.run(options=options(server), out=tmp_path / "out.tsv", ncbi_cache=tmp_path / "c",
                 table=tmp_path / "t.tsv", **paths)
    out = pd.read_csv(tmp_path / "out.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("gene")
    assert out.loc["GENE4", "description"] == "curated text" and out.loc["GENE4", "source"] == "table"
