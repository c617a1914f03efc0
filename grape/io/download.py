"""Reliable HTTP for every download of the pipeline: files, JSON and text requests.

Public API
    :class:`RetryPolicy`
        How hard to try: ``retries`` (extra attempts after the first), ``backoff``
        (first delay in seconds, doubled after every failed attempt, capped at
        ``max_backoff``) and ``timeout`` (seconds to connect and between two reads
        of the body, so a stalled response fails instead of hanging).
    :func:`fetch` ``(url, dest, *, validate=None, policy=RetryPolicy(), session=None, headers=None, genes=(), resume=True) -> Path``
        Download one file to ``dest``. The body is written to ``dest.part`` (never
        to ``dest``), checked, then renamed onto ``dest``: ``dest`` either does not
        exist or is complete and valid. A ``.part`` left by an interrupted run is
        resumed with an HTTP ``Range`` request (and ``If-Range`` with the ETag or
        Last-Modified date recorded beside it), so a rerun fetches only the missing
        bytes; a server that ignores ranges answers 200 and the file is fetched
        whole. ``validate(path)`` checks the finished file (raise ``ValueError``);
        :func:`gzip_validator` builds one for ``.gz`` files.
    :func:`request_json` / :func:`request_text` / :func:`request_bytes` ``(url, *, method="GET", params=None, json_body=None, data=None, headers=None, policy=..., session=None, genes=(), parse=None)``
        One request whose answer is small enough to hold in memory; ``parse``
        turns the body into data and raises ``ValueError`` when it cannot (then the
        request is retried like any other failure).
    :func:`call_with_retries` ``(attempt, *, url, policy, genes=(), what="request", sleep=time.sleep)``
        The retry loop itself, for clients that are not built on ``requests``
        (``grape.annotation.ncbi`` wraps Bio.Entrez with it).
    :class:`ResponseCache`
        Answers of requests stored on disk as JSON, one file per request keyed by
        the sha256 of the request's content, written atomically: an interrupted run
        that asks again gets the stored answer and sends nothing.
    :class:`DownloadError`
        Raised after the last attempt; its message names the URL (with secrets such
        as ``api_key`` masked), the genes involved and the last reason.

What counts as a failure (and is retried)
    connection errors and timeouts; HTTP 5xx, 408 and 429 (waiting what the
    ``Retry-After`` header asks when it asks more than the backoff, up to
    ``max_backoff``); a body shorter than its ``Content-Length`` (truncated); an
    HTML page where data was expected (an error page served with status 200);
    a body that fails to parse or validate. Other 4xx answers are not retried:
    the request itself is wrong. No answer that failed one of these checks is
    ever written to its destination or to the cache.

Secrets are never logged: URLs in messages go through :func:`redact_url`.
"""

from __future__ import annotations

import dataclasses
import email.utils
import gzip
import hashlib
import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from grape.io.files import atomic_path
from grape.options import options_class

log = logging.getLogger(__name__)

T = TypeVar("T")

SECRET_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token", "password", "secret", "email"})
"""Query parameters whose values are masked in every message."""

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses that are retried; other 4xx/5xx are final."""

CHUNK_SIZE = 1 << 16
SHOWN_GENES = 10


@dataclass(frozen=True)
class DownloadOptions(options_class("download")):
    """Retries and timeouts of every download (config section ``download``): ``retries`` (attempts
    after the first one), ``backoff`` (first delay in seconds, doubled after each failed attempt),
    ``max_backoff`` (longest delay, also caps a server's Retry-After) and ``timeout`` (seconds to
    connect, and without any byte of the body, before an attempt fails).

    The one declaration of these options: the options of every stage that downloads inherit it.
    """

    def retry_policy(self) -> RetryPolicy:
        """These options as the :class:`RetryPolicy` of :func:`fetch` and the request functions."""
        return RetryPolicy(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DownloadOptions)})


@dataclass(frozen=True)
class RetryPolicy(DownloadOptions):
    """Retries, exponential backoff and per-read timeout of a request (the ``download`` options, checked)."""

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0 or self.timeout <= 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, failures: int) -> float:
        """Backoff before the next attempt after ``failures`` failed attempts (1, 2, ...)."""
        return min(self.backoff * 2 ** (failures - 1), self.max_backoff)


class DownloadError(RuntimeError):
    """A request failed after its last attempt (or for good, e.g. HTTP 404)."""

    def __init__(self, message: str, *, url: str, genes: Sequence[str] = (), attempts: int = 1) -> None:
        super().__init__(message)
        self.url = url
        self.genes = tuple(genes)
        self.attempts = attempts


class TransientError(Exception):
    """One attempt failed in a way that is worth retrying."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class PermanentError(Exception):
    """One attempt failed in a way that retrying cannot fix (e.g. HTTP 404)."""


# --------------------------------------------------------------------------- helpers


def redact_url(url: str) -> str:
    """``url`` without user info and with secret query values masked (``api_key=***``)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    query = urlencode(
        [(k, "***" if k.lower() in SECRET_PARAMS else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="*:,",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def describe_genes(genes: Sequence[str]) -> str:
    """``"genes A, B, C"`` (the first few and a count when there are many), or ``""``."""
    if not genes:
        return ""
    shown = ", ".join(genes[:SHOWN_GENES])
    more = f", ... ({len(genes)} genes in all)" if len(genes) > SHOWN_GENES else ""
    return f"genes {shown}{more}"


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds asked by a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def looks_like_html(head: bytes) -> bool:
    """Whether a body starts like an HTML page (after whitespace and a BOM)."""
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:64].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def _check_html(content_type: str | None, head: bytes, *, expect_html: bool = False) -> None:
    if expect_html:
        return
    if content_type and content_type.split(";")[0].strip().lower() in {"text/html", "application/xhtml+xml"}:
        raise TransientError(f"got an HTML page (Content-Type {content_type}) instead of data")
    if looks_like_html(head):
        raise TransientError("got an HTML page instead of data")


def call_with_retries(
    attempt: Callable[[], T],
    *,
    url: str,
    policy: RetryPolicy,
    genes: Sequence[str] = (),
    what: str = "request",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``attempt`` until it succeeds, retrying :class:`TransientError` with backoff.

    ``attempt`` raises :class:`TransientError` (retried, honouring its
    ``retry_after``) or :class:`PermanentError` (not retried). After the last
    attempt a :class:`DownloadError` names the redacted ``url``, ``genes`` and the
    last reason.
    """
    shown_url = redact_url(url)
    where = describe_genes(genes)
    attempts = policy.retries + 1
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except PermanentError as error:
            raise DownloadError(
                f"{what} {shown_url} failed{' for ' + where if where else ''}: {error}",
                url=shown_url, genes=genes, attempts=number,
            ) from None
        except TransientError as error:
            if number == attempts:
                raise DownloadError(
                    f"{what} {shown_url} failed after {attempts} attempts"
                    f"{' for ' + where if where else ''}: {error}",
                    url=shown_url, genes=genes, attempts=number,
                ) from None
            delay = policy.delay(number)
            if error.retry_after is not None:
                delay = min(max(delay, error.retry_after), policy.max_backoff)
            log.warning(
                "%s %s: attempt %d/%d failed (%s); retrying in %.2f s",
                what, shown_url, number, attempts, error, delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _session(session: Any | None) -> Any:
    if session is not None:
        return session
    import requests

    return requests.Session()


def _status_error(response: Any) -> Exception:
    """The error for a non-2xx response: transient for 408/429/5xx, permanent otherwise."""
    reason = f"HTTP {response.status_code} {response.reason or ''}".strip()
    if response.status_code in RETRY_STATUS or response.status_code >= 500:
        return TransientError(reason, retry_after=retry_after_seconds(response.headers.get("Retry-After")))
    return PermanentError(reason)


def _transport_error(error: Exception) -> TransientError:
    """A requests/urllib3 exception as a retryable error, without its URL (it may hold secrets)."""
    name = type(error).__name__
    text = str(error)
    if "Read timed out" in text or "timed out" in text.lower():
        return TransientError(f"{name}: timed out")
    if "IncompleteRead" in text or "Connection broken" in text:
        return TransientError(f"{name}: truncated body (connection closed before Content-Length bytes)")
    return TransientError(f"{name}: connection failed")


# --------------------------------------------------------------------------- requests


def request_bytes(
    url: str,
    *,
    method: str = "GET",
    params: Mapping[str, Any] | None = None,
    json_body: Any = None,
    data: Any = None,
    headers: Mapping[str, str] | None = None,
    policy: RetryPolicy = RetryPolicy(),
    session: Any | None = None,
    genes: Sequence[str] = (),
    parse: Callable[[bytes], T] | None = None,
    expect_html: bool = False,
    what: str = "request",
) -> Any:
    """Send one request with retries; return ``parse(body)`` (the raw bytes without ``parse``)."""
    import requests

    http = _session(session)
    full_url = url if not params else f"{url}{'&' if '?' in url else '?'}{urlencode(params, doseq=True)}"

    def attempt() -> Any:
        try:
            response = http.request(
                method, url, params=params, json=json_body, data=data, headers=dict(headers or {}),
                timeout=(policy.timeout, policy.timeout),
            )
            body = response.content
        except requests.RequestException as error:
            raise _transport_error(error) from None
        if not 200 <= response.status_code < 300:
            raise _status_error(response)
        expected = response.headers.get("Content-Length")
        if expected is not None and expected.isdigit() and "Content-Encoding" not in response.headers:
            if len(body) < int(expected):
                raise TransientError(f"truncated body ({len(body)} of {expected} bytes)")
        _check_html(response.headers.get("Content-Type"), body[:512], expect_html=expect_html)
        if parse is None:
            return body
        try:
            return parse(body)
        except (ValueError, KeyError, TypeError) as error:
            raise TransientError(f"unparseable answer: {type(error).__name__}: {str(error)[:200]}") from None

    return call_with_retries(attempt, url=full_url, policy=policy, genes=genes, what=what)


def request_json(url: str, **kwargs: Any) -> Any:
    """:func:`request_bytes` whose answer is JSON (default ``parse``: ``json.loads``)."""
    user_parse = kwargs.pop("parse", None)

    def parse(body: bytes) -> Any:
        value = json.loads(body.decode("utf-8"))
        return user_parse(value) if user_parse is not None else value

    headers = {"Accept": "application/json", **dict(kwargs.pop("headers", None) or {})}
    return request_bytes(url, parse=parse, headers=headers, **kwargs)


def request_text(url: str, **kwargs: Any) -> Any:
    """:func:`request_bytes` whose answer is UTF-8 text (then ``parse`` on the text, when given)."""
    user_parse = kwargs.pop("parse", None)

    def parse(body: bytes) -> Any:
        text = body.decode("utf-8")
        return user_parse(text) if user_parse is not None else text

    return request_bytes(url, parse=parse, **kwargs)


# --------------------------------------------------------------------------- files


def partial_path(dest: str | os.PathLike[str]) -> Path:
    """Where :func:`fetch` keeps the bytes of an unfinished download of ``dest``."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def _part_meta_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.json")


def fetch(
    url: str,
    dest: str | os.PathLike[str],
    *,
    validate: Callable[[Path], None] | None = None,
    policy: RetryPolicy = RetryPolicy(),
    session: Any | None = None,
    headers: Mapping[str, str] | None = None,
    genes: Sequence[str] = (),
    resume: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` atomically, resuming a previous partial download.

    Returns ``dest``. On failure ``dest`` is untouched; a transport failure
    (timeout, dropped connection, truncated body) keeps the bytes received so far in
    ``dest.part`` for the next run to resume, while a body that is wrong (HTML,
    failed validation, HTTP 4xx) is deleted.
    """
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    meta_path = _part_meta_path(dest)
    http = _session(session)

    def discard() -> None:
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)

    def attempt() -> Path:
        offset = part.stat().st_size if resume and part.exists() else 0
        if offset == 0:
            discard()
        request_headers = dict(headers or {})
        # Ranges count encoded bytes: ask for the file as stored on the server.
        request_headers.setdefault("Accept-Encoding", "identity")
        if offset:
            request_headers["Range"] = f"bytes={offset}-"
            meta = _read_meta(meta_path)
            if meta.get("etag") or meta.get("last_modified"):
                request_headers["If-Range"] = meta.get("etag") or meta["last_modified"]
        try:
            response = http.get(url, headers=request_headers, stream=True, timeout=(policy.timeout, policy.timeout))
        except requests.RequestException as error:
            raise _transport_error(error) from None
        with response:
            if response.status_code == 416 and offset:
                discard()  # the partial file does not fit the server's file: start again
                raise TransientError("HTTP 416: partial download does not match; restarting")
            if not 200 <= response.status_code < 300:
                error = _status_error(response)
                if isinstance(error, PermanentError):
                    discard()
                raise error
            append = False
            if response.status_code == 206 and offset:
                start = _content_range_start(response.headers.get("Content-Range"))
                if start != offset:
                    discard()
                    raise TransientError(f"server resumed at byte {start}, expected {offset}; restarting")
                append = True
                log.info("resuming %s at byte %d", redact_url(url), offset)
            elif offset:
                log.info("%s: server sent the whole file (no range support); starting again", redact_url(url))
            expected = response.headers.get("Content-Length")
            first = b""
            written = 0
            _write_meta(meta_path, response.headers)
            with open(part, "ab" if append else "wb") as handle:
                try:
                    # read1 returns what has arrived, so a stall keeps the bytes before it
                    while chunk := response.raw.read1(CHUNK_SIZE, decode_content=False):
                        if not first and not append:
                            first = chunk[:512]
                            try:
                                _check_html(response.headers.get("Content-Type"), first)
                            except TransientError:
                                handle.close()
                                discard()
                                raise
                        handle.write(chunk)
                        written += len(chunk)
                except TransientError:
                    raise
                except Exception as error:  # urllib3 ProtocolError / ReadTimeoutError mid-body
                    raise _transport_error(error) from None
            if expected is not None and expected.isdigit() and written < int(expected):
                raise TransientError(f"truncated body ({written} of {expected} bytes)")
        if validate is not None:
            try:
                validate(part)
            except (ValueError, OSError, EOFError, zlib.error) as error:
                discard()
                raise TransientError(f"downloaded file is invalid: {error}") from None
        os.chmod(part, 0o666 & ~_umask())
        os.replace(part, dest)
        meta_path.unlink(missing_ok=True)
        return dest

    try:
        result = call_with_retries(attempt, url=url, policy=policy, genes=genes, what="download")
    except DownloadError as error:
        if part.exists():
            raise DownloadError(
                f"{error} (the {part.stat().st_size} bytes received are kept in {part}; rerun to resume)",
                url=error.url, genes=error.genes, attempts=error.attempts,
            ) from None
        raise
    log.info("downloaded %s to %s (%d bytes)", redact_url(url), dest, dest.stat().st_size)
    return result


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _content_range_start(value: str | None) -> int | None:
    """Start byte of a ``Content-Range: bytes START-END/TOTAL`` header."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _read_meta(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_meta(path: Path, headers: Mapping[str, str]) -> None:
    meta = {"etag": headers.get("ETag", ""), "last_modified": headers.get("Last-Modified", "")}
    if meta["etag"].startswith("W/"):
        meta["etag"] = ""  # weak validators cannot be used with If-Range
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(meta))


def gzip_validator(*, first_line: Callable[[bytes], None] | None = None) -> Callable[[Path], None]:
    """A ``validate`` for :func:`fetch`: the file is a complete gzip stream (CRC checked).

    ``first_line(line)`` also checks the first non-empty, non-comment line of the
    decompressed text (raise ``ValueError``).
    """

    def validate(path: Path) -> None:
        with open(path, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":
                raise ValueError(f"{path.name} is not gzip-compressed")
        checked = first_line is None
        with gzip.open(path, "rb") as handle:
            while True:
                if not checked:
                    line = handle.readline()
                    if not line:
                        break
                    if line.strip() and not line.startswith(b"#"):
                        first_line(line)
                        checked = True
                    continue
                if not handle.read(1 << 20):
                    break
        if not checked:
            raise ValueError(f"{path.name} holds no data lines")

    return validate


# --------------------------------------------------------------------------- cache


class ResponseCache:
    """Answers of requests as JSON files under ``root``, keyed by the request's content.

    ``key`` is any JSON-serialisable description of the request (endpoint and
    parameters, never credentials). Entries are written atomically; an unreadable
    entry counts as absent and is asked again.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @staticmethod
    def digest(key: Any) -> str:
        """sha256 of the canonical JSON of ``key``."""
        return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def path(self, key: Any) -> Path:
        digest = self.digest(key)
        return self.root / digest[:2] / f"{digest}.json"

    def get(self, key: Any) -> Any | None:
        """The stored answer, or None."""
        path = self.path(key)
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)["answer"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError):
            log.warning("cache entry %s is unreadable; asking again", path)
            return None

    def put(self, key: Any, answer: Any) -> None:
        """Store ``answer`` atomically."""
        with atomic_path(self.path(key)) as tmp:
            tmp.write_text(json.dumps({"key": key, "answer": answer}, sort_keys=True), encoding="utf-8")

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.is_dir() else 0


def batched(items: Sequence[T], size: int) -> Iterable[list[T]]:
    """Consecutive batches of at most ``size`` items."""
    if size < 1:
        raise ValueError(f"batch size must be positive, got {size}")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
