"""Ensembl: the files of a pinned release (FTP site) and sequences from the REST API.

Release files (``python -m grape ensembl``)
    pyensembl names the files of a release: ``pyensembl.EnsemblRelease(release,
    species, server=...)`` gives the GTF and the cDNA / ncRNA FASTA URLs (its own
    species registry and URL templates, so the file names follow every Ensembl
    layout change pyensembl knows), and :func:`release_files` puts each file where
    pyensembl's cache keeps it, ``<root>/pyensembl/<assembly>/ensembl<release>/<file>``
    (what ``EnsemblRelease`` finds there when ``PYENSEMBL_CACHE_DIR=<root>``).

    The bytes are downloaded with :func:`grape.io.download.fetch` rather than with
    pyensembl's ``download()`` (datacache underneath). datacache retries and
    publishes atomically, but through pyensembl its retry count and backoff cannot
    be set, it keeps an HTML error page served with status 200 as the file, and it
    resumes only when the size is known in advance. ``fetch`` retries with backoff
    and ``Retry-After``, rejects HTML, checks every file is a complete gzip stream
    whose first line is GTF or FASTA, writes atomically and resumes with HTTP
    ``Range``. ``grape annotate`` then indexes the files from local paths with
    pyensembl (``pyensembl.Genome``), the same code path as any local annotation;
    it never downloads. The server is configurable (``annotate.ensembl_url``), so
    a mirror, or the tests' loopback server, can stand in for Ensembl.

Sequences (REST)
    :func:`rest_sequences` asks ``POST /sequence/id`` (genomic sequence of genes,
    optionally widened by flanks) or ``POST /sequence/region/<species>`` (promoter
    windows computed from the gene's coordinates) in batches of at most 50, the
    most Ensembl accepts per request. Each answered batch is cached on disk
    (:class:`grape.io.download.ResponseCache`), so an interrupted run resumes without
    asking again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grape.io.download import DownloadOptions, ResponseCache, RetryPolicy, batched, fetch, gzip_validator
from grape.options import option_field

log = logging.getLogger(__name__)

ENSEMBL_FTP = "https://ftp.ensembl.org"
ENSEMBL_REST = "https://rest.ensembl.org"
REST_MAX_BATCH = 50
"""Most ids (or regions) Ensembl REST accepts in one POST."""

KINDS = ("gtf", "cdna", "ncrna")


@dataclass(frozen=True)
class Options(DownloadOptions):
    """Which release to download and how hard to try (``annotate.ensembl_*`` and ``download`` keys).

    The rule passes the release from its file's path and the species and server from the
    ``annotate`` section; their defaults and help are the schema's ``annotate.ensembl_species``,
    ``annotate.ensembl_release`` and ``annotate.ensembl_url``.
    """

    species: str = option_field("annotate", "ensembl_species")
    release: int = option_field("annotate", "ensembl_release")
    ensembl_url: str = option_field("annotate", "ensembl_url")


def policy_of(options: DownloadOptions) -> RetryPolicy:
    """The retry policy of options with the ``download`` keys."""
    return options.retry_policy()


# --------------------------------------------------------------------------- release files


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release: where Ensembl serves it and where pyensembl keeps it."""

    kind: str
    url: str
    path: Path


def release_files(*, species: str, release: int, server: str = ENSEMBL_FTP, root: str | Path = "resources") -> dict[str, ReleaseFile]:
    """GTF, cDNA and ncRNA FASTA of a release, by kind (``gtf``, ``cdna``, ``ncrna``).

    Raises ``ValueError`` naming the species or release when pyensembl does not
    know them. Nothing is downloaded or created.
    """
    import pyensembl
    from pyensembl.download_cache import cache_subdirectory

    try:
        genome = pyensembl.EnsemblRelease(release, species, server=server.rstrip("/"))
    except (ValueError, TypeError) as error:
        raise ValueError(f"annotate.ensembl_species / ensembl_release: {species!r} release {release}: {error}") from None
    urls = {"gtf": genome.gtf_url}
    for url in genome.transcript_fasta_urls:
        kind = "ncrna" if "/ncrna/" in url else "cdna" if "/cdna/" in url else None
        if kind:
            urls[kind] = url
    if set(urls) != set(KINDS):
        raise ValueError(f"pyensembl gives no cDNA/ncRNA FASTA for {species} release {release}: {sorted(urls)}")
    directory = Path(root) / cache_subdirectory(genome.reference_name, "ensembl", genome.release)
    return {kind: ReleaseFile(kind, urls[kind], directory / urls[kind].rsplit("/", 1)[1]) for kind in KINDS}


def _first_gtf_line(line: bytes) -> None:
    if len(line.rstrip(b"\r\n").split(b"\t")) != 9:
        raise ValueError("first line is not a 9-column GTF line")


def _first_fasta_line(line: bytes) -> None:
    if not line.startswith(b">"):
        raise ValueError("does not start with a '>' FASTA header")


def download_release(
    files: Mapping[str, ReleaseFile], *, policy: RetryPolicy = RetryPolicy(), session: Any | None = None
) -> dict[str, Path]:
    """Download the release files that are not there yet; return their paths by kind."""
    out = {}
    for kind, item in files.items():
        if item.path.is_file():
            log.info("%s: %s already downloaded", kind, item.path)
        else:
            check = _first_gtf_line if kind == "gtf" else _first_fasta_line
            fetch(item.url, item.path, validate=gzip_validator(first_line=check), policy=policy, session=session)
        out[kind] = item.path
    return out


def select_release_file(
    files: Mapping[str, ReleaseFile], path: str | Path, *, species: str, release: int
) -> dict[str, ReleaseFile]:
    """The one file of ``files`` that lives at ``path``; ``ValueError`` naming the release's files otherwise."""
    wanted = {k: v for k, v in files.items() if v.path.resolve() == Path(path).resolve()}
    if not wanted:
        raise ValueError(
            f"--file {path} is not a file of {species} Ensembl release {release} "
            f"(those are {', '.join(str(v.path) for v in files.values())}); check annotate.ensembl_species"
        )
    return wanted


# --------------------------------------------------------------------------- REST sequences


@dataclass(frozen=True)
class SequenceRequest:
    """What :func:`rest_sequences` asks for one gene."""

    gene_id: str
    contig: str = ""
    start: int = 0
    end: int = 0
    strand: str = "+"


def promoter_region(gene: SequenceRequest, *, upstream: int, downstream: int) -> str:
    """Ensembl REST region ``contig:start..end:strand`` around the gene's TSS (1-based, inclusive)."""
    if gene.strand == "-":
        tss = gene.end
        start, end, strand = max(1, tss - downstream), tss + upstream, -1
    else:
        tss = gene.start
        start, end, strand = max(1, tss - upstream), tss + downstream, 1
    return f"{gene.contig}:{start}..{end}:{strand}"


def rest_sequences(
    genes: Sequence[SequenceRequest],
    *,
    kind: str,
    rest_url: str = ENSEMBL_REST,
    species: str = "homo_sapiens",
    upstream: int = 0,
    downstream: int = 0,
    batch_size: int = REST_MAX_BATCH,
    cache: ResponseCache | None = None,
    policy: RetryPolicy = RetryPolicy(),
    session: Any | None = None,
) -> dict[str, str]:
    """Sequences by gene id from Ensembl REST; genes Ensembl does not return are absent.

    ``kind`` is ``genomic`` (the gene's genomic sequence on its strand, widened by
    ``upstream`` bases 5' and ``downstream`` bases 3': ``POST /sequence/id`` with
    ``expand_5prime`` / ``expand_3prime``) or ``promoter`` (``upstream`` bases
    before the TSS and ``downstream`` after it, on the gene's strand:
    ``POST /sequence/region/<species>``).
    """
    from grape.io.download import request_json

    if kind not in ("genomic", "promoter"):
        raise ValueError(f"unknown REST sequence kind {kind!r} (genomic or promoter)")
    if not 1 <= batch_size <= REST_MAX_BATCH:
        raise ValueError(f"Ensembl REST accepts 1 to {REST_MAX_BATCH} ids per request, got {batch_size}")
    rest_url = rest_url.rstrip("/")
    out: dict[str, str] = {}
    n_requests = n_cached = 0
    for batch in batched(list(genes), batch_size):
        ids = [g.gene_id for g in batch]
        if kind == "genomic":
            url = f"{rest_url}/sequence/id"
            body: dict[str, Any] = {"ids": ids, "type": "genomic"}
            if upstream:
                body["expand_5prime"] = upstream
            if downstream:
                body["expand_3prime"] = downstream
            keys = ids
        else:
            url = f"{rest_url}/sequence/region/{species}"
            regions = [promoter_region(g, upstream=upstream, downstream=downstream) for g in batch]
            body = {"regions": regions}
            keys = regions
        key = {"url": url, "body": body}
        answer = cache.get(key) if cache is not None else None
        if answer is None:
            answer = request_json(
                url, method="POST", json_body=body, headers={"Content-Type": "application/json"},
                policy=policy, session=session, genes=ids, parse=_parse_sequences, what="Ensembl REST",
            )
            n_requests += 1
            if cache is not None:
                cache.put(key, answer)
        else:
            n_cached += 1
        by_query = {item["query"]: item["seq"] for item in answer}
        by_id = {item["id"]: item["seq"] for item in answer if item.get("id")}
        for gene, query in zip(batch, keys):
            seq = by_query.get(query) or (by_id.get(query) if kind == "genomic" else None)
            if seq:
                out[gene.gene_id] = seq
    log.info("Ensembl REST %s sequences: %d of %d genes, %d requests, %d batches from the cache",
             kind, len(out), len(genes), n_requests, n_cached)
    return out


def _parse_sequences(value: Any) -> list[dict[str, str]]:
    """Check a REST sequence answer: a list of objects with ``seq`` (and ``query`` / ``id``)."""
    if not isinstance(value, list):
        raise ValueError("expected a JSON list of sequences")
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("seq"), str):
            raise ValueError("a sequence object lacks 'seq'")
        seq = item["seq"].upper()
        if seq.strip("ACGTN"):
            raise ValueError(f"sequence of {item.get('id') or item.get('query')} has letters other than ACGTN")
        out.append({"id": str(item.get("id", "")), "query": str(item.get("query", item.get("id", ""))), "seq": seq})
    return out
