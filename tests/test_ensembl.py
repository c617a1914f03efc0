"""Ensembl release download and REST sequences against the loopback server, then the annotate stage."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from grape.annotation import annotate

from grape.annotation import ensembl
from grape.stages import annotate as annotate_stage
from grape.stages import ensembl as ensembl_stage
from grape.io.download import DownloadError, ResponseCache, RetryPolicy
from grape.annotation.ensembl import SequenceRequest, promoter_region, release_files, rest_sequences
from tests.http_server import LoopbackServer, Response, html, stall, status, truncate
from tests.test_annotate import SEQUENCES, fasta_text, gtf_text, outputs, read_fasta, read_tsv, write_dataset, MEASURED

FAST = dict(retries=3, backoff=0.01, max_backoff=1.0, timeout=0.5)
POLICY = RetryPolicy(**FAST)
SPECIES, RELEASE = "homo_sapiens", 110


def served_release(server: LoopbackServer, root: Path) -> dict[str, ensembl.ReleaseFile]:
    """Serve the fixture annotation, gzipped, at the URLs pyensembl gives for the release."""
    files = release_files(species=SPECIES, release=RELEASE, server=server.url(), root=root)
    bodies = {"gtf": gtf_text(), "cdna": fasta_text("cdna"), "ncrna": fasta_text("ncrna")}
    for kind, item in files.items():
        path = item.url[len(server.url()):]
        server.add_file(path, gzip.compress(bodies[kind].encode()), "application/x-gzip")
    return files


def path_of(item: ensembl.ReleaseFile, server: LoopbackServer) -> str:
    return item.url[len(server.url()):]


def test_release_files_follow_pyensembl(tmp_path):
    import pyensembl

    files = release_files(species=SPECIES, release=RELEASE, root=tmp_path)
    directory = tmp_path / "pyensembl" / "GRCh38" / f"ensembl{RELEASE}"
    assert files["gtf"].url == (
        f"https://ftp.ensembl.org/pub/release-{RELEASE}/gtf/homo_sapiens/Homo_sapiens.GRCh38.{RELEASE}.chr_patch_hapl_scaff.gtf.gz"
    )
    assert files["cdna"].path == directory / "Homo_sapiens.GRCh38.cdna.all.fa.gz"
    assert files["ncrna"].path == directory / "Homo_sapiens.GRCh38.ncrna.fa.gz"
    # pyensembl's own EnsemblRelease finds the files where we put them
    for item in files.values():
        item.path.parent.mkdir(parents=True, exist_ok=True)
        item.path.write_bytes(b"x")
    genome = pyensembl.EnsemblRelease(RELEASE, SPECIES, cache_directory_path=str(directory))
    assert genome.download_cache.cached_path(genome.gtf_url) == str(files["gtf"].path)
    assert sorted(map(genome.download_cache.cached_path, genome.transcript_fasta_urls)) == sorted(
        str(files[k].path) for k in ("cdna", "ncrna"))


def test_unknown_species_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="ensembl_species"):
        release_files(species="not_a_species", release=RELEASE, root=tmp_path)


def test_download_with_faults_then_annotate(tmp_path):
    """Every fault once, then pyensembl indexes the downloaded gzip files like local ones."""
    with LoopbackServer() as server:
        files = served_release(server, tmp_path / "resources")
        server.inject(path_of(files["gtf"], server), status(500), status(429, retry_after="0"))
        server.inject(path_of(files["cdna"], server), html(), truncate())
        server.inject(path_of(files["ncrna"], server), stall(1.5))
        options = ensembl.Options(species=SPECIES, release=RELEASE, ensembl_url=server.url(), **FAST)
        for item in files.values():
            ensembl_stage.run(options=options, root=tmp_path / "resources", file=item.path)
        for kind, text in (("gtf", gtf_text()), ("cdna", fasta_text("cdna")), ("ncrna", fasta_text("ncrna"))):
            assert gzip.decompress(files[kind].path.read_bytes()).decode() == text
        assert server.count() == 3 + 2 + 2 + 1
        assert not [p for p in files["gtf"].path.parent.iterdir() if p.name.endswith((".part", ".json", ".tmp"))]

    write_dataset(tmp_path / "data.h5ad", var_names=MEASURED)
    paths = {"gtf": files["gtf"].path, "cdna": files["cdna"].path, "ncrna": files["ncrna"].path,
             "dataset": tmp_path / "data.h5ad", **outputs(tmp_path), "mapping_out": tmp_path / "mapping.tsv"}
    annotate_stage.run(options=annotate.Options(), **paths)
    genes = read_tsv(paths["genes_out"]).set_index("dataset_name")
    assert genes.loc["AAA1", "canonical_transcript"] == "ENST00000000001"
    assert read_fasta(paths["fasta_out"])["ENSG00000000003"][1] == SEQUENCES["ENST00000000006"]
    assert genes.loc["LNC3", "description"] == "test gene LNC3"  # [Source:...] dropped
    assert genes.loc["LNC3", "description_source"] == "ensembl"


def test_failed_file_is_resumed_and_finished_files_are_not_fetched_again(tmp_path):
    with LoopbackServer() as server:
        files = served_release(server, tmp_path)
        ncrna = path_of(files["ncrna"], server)
        server.inject(ncrna, *[status(503)] * 4)
        options = ensembl.Options(species=SPECIES, release=RELEASE, ensembl_url=server.url(), **FAST)
        with pytest.raises(DownloadError) as info:
            ensembl_stage.run(options=options, root=tmp_path)
        assert ncrna in str(info.value) and "HTTP 503" in str(info.value)
        assert files["gtf"].path.is_file() and files["cdna"].path.is_file() and not files["ncrna"].path.exists()
        before = server.count()
        ensembl_stage.run(options=options, root=tmp_path)
        assert server.count() - before == 1 and server.requests[-1].path == ncrna
        assert files["ncrna"].path.is_file()


def test_file_outside_the_release_is_refused(tmp_path):
    options = ensembl.Options(species=SPECIES, release=RELEASE)
    with pytest.raises(ValueError, match="not a file of homo_sapiens Ensembl release 110"):
        ensembl_stage.run(options=options, root=tmp_path, file=tmp_path / "other.gtf.gz")


# --------------------------------------------------------------------------- REST


def rest_server(server: LoopbackServer, genome: dict[str, str]) -> None:
    """POST /sequence/id and /sequence/region/<species> answering like Ensembl REST."""

    def by_id(request):
        body = json.loads(request.body)
        assert len(body["ids"]) <= 50
        pad5, pad3 = "N" * body.get("expand_5prime", 0), "N" * body.get("expand_3prime", 0)
        items = [{"id": i, "query": i, "seq": pad5 + genome[i] + pad3, "molecule": "dna",
                  "desc": f"chromosome:GRCh38:1:1:{len(genome[i])}:1"} for i in body["ids"] if i in genome]
        return Response(200, json.dumps(items).encode(), "application/json")

    def by_region(request):
        body = json.loads(request.body)
        assert len(body["regions"]) <= 50
        items = [{"query": r, "id": f"chromosome:GRCh38:{r}", "seq": "ACGT" * 5, "molecule": "dna"}
                 for r in body["regions"]]
        return Response(200, json.dumps(items).encode(), "application/json")

    server.add_handler("POST", "/sequence/id", by_id)
    server.add_handler("POST", "/sequence/region/homo_sapiens", by_region)


def test_rest_genomic_in_batches_with_faults_and_cache(tmp_path):
    genome = {f"ENSG{i:011d}": "ACGT"[i % 4] * (10 + i) for i in range(120)}
    genes = [SequenceRequest(g) for g in genome] + [SequenceRequest("ENSG99999999999")]
    with LoopbackServer() as server:
        rest_server(server, genome)
        server.inject("/sequence/id", status(500), status(429, retry_after="0"), stall(1.5), truncate(), html())
        cache = ResponseCache(tmp_path / "rest")
        policy = RetryPolicy(retries=6, backoff=0.01, timeout=0.5)
        got = rest_sequences(genes, kind="genomic", rest_url=server.url(), upstream=3, downstream=2,
                             cache=cache, policy=policy)
        assert got == {g: "NNN" + s + "NN" for g, s in genome.items()}
        answered = [r for r in server.requests if r.path == "/sequence/id"]
        assert len(answered) == 3 + 5  # ceil(121 / 50) batches, five faults
        sizes = sorted(len(json.loads(r.body)["ids"]) for r in answered[-3:])
        assert sizes == [21, 50, 50]
        again = rest_sequences(genes, kind="genomic", rest_url=server.url(), upstream=3, downstream=2,
                               cache=cache, policy=policy)
        assert again == got and server.count("/sequence/id") == 8  # all from the cache


def test_rest_errors_name_the_genes(tmp_path):
    with LoopbackServer() as server:
        rest_server(server, {})
        server.inject("/sequence/id", *[status(500)] * 4)
        with pytest.raises(DownloadError) as info:
            rest_sequences([SequenceRequest("ENSG1"), SequenceRequest("ENSG2")], kind="genomic",
                           rest_url=server.url(), cache=ResponseCache(tmp_path), policy=POLICY)
        assert "/sequence/id" in str(info.value) and "genes ENSG1, ENSG2" in str(info.value)
        assert len(ResponseCache(tmp_path)) == 0


def test_promoter_regions():
    plus = SequenceRequest("G", contig="7", start=1000, end=5000, strand="+")
    minus = SequenceRequest("G", contig="X", start=1000, end=5000, strand="-")
    assert promoter_region(plus, upstream=200, downstream=50) == "7:800..1050:1"
    assert promoter_region(minus, upstream=200, downstream=50) == "X:4950..5200:-1"
    assert promoter_region(SequenceRequest("G", "1", 100, 900, "+"), upstream=500, downstream=0) == "1:1..100:1"
    with pytest.raises(ValueError, match="1 to 50 ids per request"):
        rest_sequences([plus], kind="promoter", batch_size=51)


def test_annotate_with_rest_sequences(tmp_path):
    """annotate.sequence promoter: the windows of the mapped genes from REST, cached under the cache dir."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "g.gtf").write_text(gtf_text())
    (root / "c.fa").write_text(fasta_text("cdna"))
    (root / "n.fa").write_text(fasta_text("ncrna"))
    write_dataset(root / "d.h5ad", var_names=MEASURED)
    paths = {"gtf": root / "g.gtf", "cdna": root / "c.fa", "ncrna": root / "n.fa", "dataset": root / "d.h5ad",
             **outputs(tmp_path)}
    with LoopbackServer() as server:
        rest_server(server, {})
        options = annotate.Options(sequence="promoter", rest_url=server.url(), flank_upstream=100,
                                   flank_downstream=20, **FAST)
        annotate_stage.run(options=options, **paths)
        genes = read_tsv(paths["genes_out"])
        assert set(genes["sequence_kind"]) == {"promoter"}
        assert set(genes["sequence_length"]) == {"20"}
        records = read_fasta(paths["fasta_out"])
        assert list(records) == genes["gene_id"].tolist()
        assert records["ENSG00000000002"][0] == ">ENSG00000000002 BBB2 promoter"
        regions = [q for r in server.requests for q in json.loads(r.body)["regions"]]
        assert "2:4980..5100:-1" in regions  # BBB2: minus strand, TSS at its end (5000)
        assert (paths["cache_dir"] / "ensembl_rest").is_dir()
