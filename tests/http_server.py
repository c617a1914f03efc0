"""A loopback HTTP server for the download tests: real formats, injected faults, counted requests.

``LoopbackServer`` listens on 127.0.0.1 (a free port) in a thread. Routes are static
files (served with ``Range`` support, ETag and Content-Length, like Ensembl's FTP
site over HTTPS) or handler functions (REST JSON, E-utilities XML). Faults are
queued per path and consumed one per request, before the route answers:

- ``status(code, retry_after=None)``: an error answer (500, 429 with Retry-After ...)
- ``stall(seconds)``: headers and part of the body, then silence past the client's timeout
- ``truncate()``: a Content-Length larger than the body, then the connection closes
- ``html()``: an HTML error page with status 200

``fail_after`` makes every request after the first N answer 500 (a server that
goes down half way). Every request is recorded (method, path, query, body) so a
test can count what a client sent.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>503 Service Temporarily Unavailable</title></head>"
    b"<body><h1>Service Temporarily Unavailable</h1><p>The server is down for maintenance.</p></body></html>\n"
)


@dataclass
class Request:
    """A request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    headers: dict[str, str]
    time: float = 0.0

    def form(self) -> dict[str, list[str]]:
        """Query and url-encoded body parameters together (E-utilities accept both)."""
        params = {k: list(v) for k, v in self.query.items()}
        if self.body and "json" not in self.headers.get("Content-Type", ""):
            for key, values in parse_qs(self.body.decode(), keep_blank_values=True).items():
                params.setdefault(key, []).extend(values)
        return params


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fault:
    kind: str
    code: int = 500
    retry_after: str | None = None
    seconds: float = 0.0


def status(code: int, retry_after: str | None = None) -> Fault:
    return Fault("status", code=code, retry_after=retry_after)


def stall(seconds: float) -> Fault:
    return Fault("stall", seconds=seconds)


def truncate() -> Fault:
    return Fault("truncate")


def html() -> Fault:
    return Fault("html")


Handler = Callable[[Request], Response]


class LoopbackServer:
    """The test server; use as a context manager."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.handlers: dict[tuple[str, str], Handler] = {}
        self.faults: dict[str, list[Fault]] = defaultdict(list)
        self.requests: list[Request] = []
        self.fail_after: int | None = None
        self.range_support = True
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ set-up

    def add_file(self, path: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        self.files[path] = (body, content_type)
        return self.url(path)

    def add_handler(self, method: str, path: str, handler: Handler) -> str:
        self.handlers[(method, path)] = handler
        return self.url(path)

    def inject(self, path: str, *faults: Fault) -> None:
        self.faults[path].extend(faults)

    def url(self, path: str = "") -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def count(self, path: str | None = None, method: str | None = None) -> int:
        return sum(1 for r in self.requests if (path is None or r.path == path) and (method is None or r.method == method))

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LoopbackServer:
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def do_GET(self) -> None:  # noqa: N802
                owner._serve(self)

            def do_POST(self) -> None:  # noqa: N802
                owner._serve(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ serving

    def _serve(self, http: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(http.path)
        length = int(http.headers.get("Content-Length") or 0)
        body = http.rfile.read(length) if length else b""
        request = Request(http.command, parts.path, parse_qs(parts.query, keep_blank_values=True), body,
                          {k: v for k, v in http.headers.items()}, time.monotonic())
        with self._lock:
            self.requests.append(request)
            number = len(self.requests)
            fault = self.faults[parts.path].pop(0) if self.faults.get(parts.path) else None
        if self.fail_after is not None and number > self.fail_after:
            fault = status(500)
        if fault is not None and fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._send(http, Response(fault.code, b"error\n", "text/plain", headers))
            return
        if fault is not None and fault.kind == "html":
            self._send(http, Response(200, HTML_PAGE, "text/html; charset=utf-8"))
            return
        response = self._answer(request)
        if fault is not None and fault.kind == "truncate":
            cut = max(1, len(response.body) // 2)
            self._send(http, response, body=response.body[:cut], length=len(response.body), close=True)
            return
        if fault is not None and fault.kind == "stall":
            cut = max(1, len(response.body) // 3)
            self._send(http, response, body=response.body[:cut], length=len(response.body), close=False)
            time.sleep(fault.seconds)
            http.close_connection = True
            return
        self._send(http, response)

    def _answer(self, request: Request) -> Response:
        handler = self.handlers.get((request.method, request.path))
        if handler is not None:
            return handler(request)
        if request.method == "GET" and request.path in self.files:
            body, content_type = self.files[request.path]
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            headers = {"ETag": etag, "Accept-Ranges": "bytes" if self.range_support else "none"}
            wanted = request.headers.get("Range")
            if_range = request.headers.get("If-Range")
            if self.range_support and wanted and wanted.startswith("bytes=") and if_range in (None, etag):
                start = int(wanted[6:].split("-", 1)[0])
                if start >= len(body):
                    return Response(416, b"", "text/plain", {"Content-Range": f"bytes */{len(body)}"})
                headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                return Response(206, body[start:], content_type, headers)
            return Response(200, body, content_type, headers)
        return Response(404, b"not found\n", "text/plain")

    @staticmethod
    def _send(http: BaseHTTPRequestHandler, response: Response, *, body: bytes | None = None,
              length: int | None = None, close: bool = False) -> None:
        payload = response.body if body is None else body
        http.send_response(response.status)
        http.send_header("Content-Type", response.content_type)
        http.send_header("Content-Length", str(len(payload) if length is None else length))
        for key, value in response.headers.items():
            http.send_header(key, value)
        if close:
            http.send_header("Connection", "close")
        http.end_headers()
        try:
            http.wfile.write(payload)
            http.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        if close:
            http.close_connection = True


# --------------------------------------------------------------------------- NCBI E-utilities


@dataclass(frozen=True)
class FakeGene:
    """A record of the fake NCBI Gene database."""

    uid: str
    name: str
    summary: str = ""
    description: str = ""
    aliases: tuple[str, ...] = ()
    taxid: str = "9606"


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


ESEARCH_HEAD = (
    '<?xml version="1.0" encoding="UTF-8" ?>\n'
    '<!DOCTYPE eSearchResult PUBLIC "-//NLM//DTD esearch 20060628//EN" '
    '"https://eutils.ncbi.nlm.nih.gov/eutils/dtd/20060628/esearch.dtd">\n'
)
ESUMMARY_HEAD = (
    '<?xml version="1.0" encoding="UTF-8" ?>\n'
    '<!DOCTYPE eSummaryResult PUBLIC "-//NLM//DTD esummary gene 20130829//EN" '
    '"https://eutils.ncbi.nlm.nih.gov/eutils/dtd/20130829/esummary_gene.dtd">\n'
)


class FakeEutils:
    """esearch.fcgi and esummary.fcgi of ``db=gene`` answering from ``genes``, in NCBI's XML."""

    PATH = "/entrez/eutils/"

    def __init__(self, genes: list[FakeGene]) -> None:
        self.genes = {g.uid: g for g in genes}
        self.by_name: dict[str, list[str]] = defaultdict(list)
        self.by_alias: dict[str, list[str]] = defaultdict(list)
        for g in genes:
            self.by_name[g.name].append(g.uid)
            for alias in g.aliases:
                self.by_alias[alias].append(g.uid)

    def install(self, server: LoopbackServer) -> str:
        for method in ("GET", "POST"):
            server.add_handler(method, self.PATH + "esearch.fcgi", self.esearch)
            server.add_handler(method, self.PATH + "esummary.fcgi", self.esummary)
        return server.url(self.PATH)

    def esearch(self, request: Request) -> Response:
        import re

        form = request.form()
        term = form.get("term", [""])[0]
        taxon = re.search(r"txid(\d+)", term)
        found: set[str] = set()
        missing = []
        for symbol, kind in re.findall(r'"([^"]+)"\[(pref|sym)\]', term):
            uids = list(self.by_name.get(symbol, []))
            if kind == "sym":
                uids += self.by_alias.get(symbol, [])
            uids = [u for u in uids if taxon is None or self.genes[u].taxid == taxon.group(1)]
            if not uids:
                missing.append(f"{symbol}[{kind}]")
            found.update(uids)
        ids = sorted(found, key=int)[: int(form.get("retmax", ["20"])[0])]
        errors = ("<ErrorList>" + "".join(f"<PhraseNotFound>{_xml_escape(m)}</PhraseNotFound>" for m in missing)
                  + "</ErrorList>") if missing else ""
        body = (ESEARCH_HEAD + f"<eSearchResult><Count>{len(found)}</Count><RetMax>{len(ids)}</RetMax>"
                "<RetStart>0</RetStart><IdList>" + "".join(f"<Id>{u}</Id>" for u in ids) + "</IdList>"
                "<TranslationSet/><QueryTranslation>(query)</QueryTranslation>" + errors + "</eSearchResult>\n")
        return Response(200, body.encode(), "text/xml; charset=UTF-8")

    def esummary(self, request: Request) -> Response:
        form = request.form()
        ids = [u for part in form.get("id", []) for u in part.split(",") if u]
        docs = []
        for uid in ids:
            gene = self.genes.get(uid)
            if gene is None:
                docs.append(f'<DocumentSummary uid="{uid}"><error>cannot get document summary</error></DocumentSummary>')
                continue
            docs.append(
                f'<DocumentSummary uid="{uid}"><Name>{_xml_escape(gene.name)}</Name>'
                f"<Description>{_xml_escape(gene.description)}</Description><Status>0</Status>"
                f"<CurrentID>0</CurrentID><Chromosome>1</Chromosome><GeneticSource>genomic</GeneticSource>"
                f"<MapLocation>1p1</MapLocation><OtherAliases>{_xml_escape(', '.join(gene.aliases))}</OtherAliases>"
                f"<OtherDesignations></OtherDesignations><NomenclatureSymbol>{_xml_escape(gene.name)}</NomenclatureSymbol>"
                f"<NomenclatureName>{_xml_escape(gene.description)}</NomenclatureName>"
                f"<NomenclatureStatus>Official</NomenclatureStatus><Mim></Mim><GenomicInfo></GenomicInfo>"
                f"<GeneWeight>1</GeneWeight><Summary>{_xml_escape(gene.summary)}</Summary><ChrSort>1</ChrSort>"
                f"<ChrStart>100</ChrStart><Organism><ScientificName>Homo sapiens</ScientificName>"
                f"<CommonName>human</CommonName><TaxID>{gene.taxid}</TaxID></Organism><LocationHist></LocationHist>"
                "</DocumentSummary>"
            )
        body = (ESUMMARY_HEAD + '<eSummaryResult><DocumentSummarySet status="OK"><DbBuild>Build000000-0000.1</DbBuild>'
                + "".join(docs) + "</DocumentSummarySet></eSummaryResult>\n")
        return Response(200, body.encode(), "text/xml; charset=UTF-8")
