"""grape.io.download against the loopback server: retries, Retry-After, timeouts, truncation, HTML, resume."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from grape.io.download import (
    DownloadError,
    ResponseCache,
    RetryPolicy,
    batched,
    fetch,
    gzip_validator,
    looks_like_html,
    partial_path,
    redact_url,
    request_json,
    request_text,
    retry_after_seconds,
)
from tests.http_server import LoopbackServer, html, stall, status, truncate

FAST = RetryPolicy(retries=3, backoff=0.01, max_backoff=2.0, timeout=0.5)
BODY = gzip.compress(b"".join(b"1\tensembl\tgene\t%d\t%d\t.\t+\t.\tgene_id \"G%d\";\n" % (i, i + 9, i) for i in range(4000)))


def gtf_line(line: bytes) -> None:
    if len(line.split(b"\t")) != 9:
        raise ValueError("not a GTF line")


@pytest.fixture()
def server():
    with LoopbackServer() as srv:
        srv.add_file("/pub/file.gtf.gz", BODY)
        yield srv


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_fetch_plain(server, tmp_path):
    dest = fetch(server.url("/pub/file.gtf.gz"), tmp_path / "f.gtf.gz", policy=FAST,
                 validate=gzip_validator(first_line=gtf_line))
    assert dest.read_bytes() == BODY
    assert leftovers(tmp_path) == ["f.gtf.gz"]


@pytest.mark.parametrize("fault", [status(500), status(503), truncate(), html(), stall(1.5)],
                         ids=["500", "503", "truncated", "html200", "stalled"])
def test_fetch_recovers_from_one_fault(server, tmp_path, fault):
    server.inject("/pub/file.gtf.gz", fault)
    dest = fetch(server.url("/pub/file.gtf.gz"), tmp_path / "f.gtf.gz", policy=FAST,
                 validate=gzip_validator(first_line=gtf_line))
    assert dest.read_bytes() == BODY
    assert server.count("/pub/file.gtf.gz") == 2
    assert leftovers(tmp_path) == ["f.gtf.gz"]


@pytest.mark.parametrize("fault", [truncate(), stall(1.5)], ids=["truncated", "stalled"])
def test_interrupted_body_resumes_with_range(server, tmp_path, fault):
    server.inject("/pub/file.gtf.gz", fault)
    fetch(server.url("/pub/file.gtf.gz"), tmp_path / "f.gtf.gz", policy=FAST)
    first, second = server.requests
    assert "Range" not in first.headers
    assert second.headers["Range"].startswith("bytes=") and int(second.headers["Range"][6:-1]) > 0
    assert second.headers["If-Range"].startswith('"')
    assert (tmp_path / "f.gtf.gz").read_bytes() == BODY


def test_retry_after_is_honoured(server, tmp_path):
    server.inject("/pub/file.gtf.gz", status(429, retry_after="1"))
    start = time.monotonic()
    fetch(server.url("/pub/file.gtf.gz"), tmp_path / "f.gtf.gz", policy=FAST)
    assert time.monotonic() - start >= 1.0  # the backoff alone would be 0.01 s
    assert server.count() == 2


def test_persistent_500_is_a_clear_error_and_no_file(server, tmp_path):
    server.inject("/pub/file.gtf.gz", *[status(500)] * 4)
    with pytest.raises(DownloadError) as info:
        fetch(server.url("/pub/file.gtf.gz"), tmp_path / "f.gtf.gz", policy=FAST, genes=["TP53", "MYC"])
    message = str(info.value)
    assert "failed after 4 attempts" in message and "/pub/file.gtf.gz" in message
    assert "HTTP 500" in message and "genes TP53, MYC" in message
    assert server.count() == 4
    assert leftovers(tmp_path) == []


def test_persistent_html_leaves_nothing(server, tmp_path):
    server.inject("/pub/file.gtf.gz", *[html()] * 4)
    with pytest.raises(DownloadError, match="HTML page"):
        fetch(server.url("/pub/file.gtf.gz"), tmp_path / "f.gtf.gz", policy=FAST)
    assert leftovers(tmp_path) == []


def test_not_found_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url("/pub/absent.gtf.gz"), tmp_path / "f.gtf.gz", policy=FAST)
    assert server.count() == 1
    assert leftovers(tmp_path) == []


def test_invalid_gzip_is_rejected(server, tmp_path):
    server.add_file("/pub/bad.gtf.gz", BODY[: len(BODY) // 2])  # complete HTTP answer, cut gzip stream
    with pytest.raises(DownloadError, match="invalid"):
        fetch(server.url("/pub/bad.gtf.gz"), tmp_path / "f.gtf.gz", policy=FAST, validate=gzip_validator())
    assert leftovers(tmp_path) == []
    server.add_file("/pub/notgtf.gz", gzip.compress(b"<xml>nope</xml>\n"))
    with pytest.raises(DownloadError, match="not a GTF line"):
        fetch(server.url("/pub/notgtf.gz"), tmp_path / "f.gtf.gz", policy=FAST,
              validate=gzip_validator(first_line=gtf_line))
    assert leftovers(tmp_path) == []


def test_interrupted_run_resumes_on_rerun(server, tmp_path):
    """A run that gives up keeps the bytes it got; the next run asks only for the rest."""
    server.inject("/pub/file.gtf.gz", *[truncate()] * 2)
    dest = tmp_path / "f.gtf.gz"
    with pytest.raises(DownloadError, match=r"kept in .*f\.gtf\.gz\.part; rerun to resume"):
        fetch(server.url("/pub/file.gtf.gz"), dest, policy=RetryPolicy(retries=1, backoff=0.01, timeout=0.5))
    assert not dest.exists()
    kept = partial_path(dest).stat().st_size
    assert 0 < kept < len(BODY)
    fetch(server.url("/pub/file.gtf.gz"), dest, policy=FAST, validate=gzip_validator(first_line=gtf_line))
    assert dest.read_bytes() == BODY
    assert server.requests[-1].headers["Range"] == f"bytes={kept}-"
    assert leftovers(tmp_path) == ["f.gtf.gz"]


def test_server_without_ranges_restarts(server, tmp_path):
    server.range_support = False
    dest = tmp_path / "f.gtf.gz"
    partial_path(dest).write_bytes(BODY[:100])
    fetch(server.url("/pub/file.gtf.gz"), dest, policy=FAST)
    assert dest.read_bytes() == BODY


def test_changed_file_is_not_mixed_with_old_part(server, tmp_path):
    dest = tmp_path / "f.gtf.gz"
    partial_path(dest).write_bytes(b"x" * 100)
    (tmp_path / "f.gtf.gz.part.json").write_text(json.dumps({"etag": '"old"', "last_modified": ""}))
    fetch(server.url("/pub/file.gtf.gz"), dest, policy=FAST)  # If-Range mismatch: whole file sent
    assert dest.read_bytes() == BODY


def test_request_json_recovers_and_parses(server):
    calls = {"n": 0}

    def answer(request):
        from tests.http_server import Response

        calls["n"] += 1
        return Response(200, json.dumps([{"id": "G1", "seq": "ACGT"}]).encode(), "application/json")

    server.add_handler("POST", "/sequence/id", answer)
    for fault in (status(500), status(429, retry_after="0"), html(), truncate()):
        server.inject("/sequence/id", fault)
    policy = RetryPolicy(retries=4, backoff=0.01, timeout=0.5)
    value = request_json(server.url("/sequence/id"), method="POST", json_body={"ids": ["G1"]}, policy=policy)
    assert value == [{"id": "G1", "seq": "ACGT"}]
    assert server.count("/sequence/id") == 5


def test_unparseable_answer_is_retried_then_fails(server):
    from tests.http_server import Response

    server.add_handler("GET", "/broken", lambda r: Response(200, b"{not json", "application/json"))
    with pytest.raises(DownloadError, match="unparseable answer"):
        request_json(server.url("/broken"), policy=FAST, genes=["G1"])
    assert server.count("/broken") == 4


def test_request_text_timeout(server):
    from tests.http_server import Response

    server.add_handler("GET", "/slow", lambda r: Response(200, b"x" * 300, "text/plain"))
    server.inject("/slow", stall(1.5))
    assert request_text(server.url("/slow"), policy=FAST) == "x" * 300
    assert server.count("/slow") == 2


def test_secrets_never_in_messages(server):
    url = server.url("/absent") + "?db=gene&api_key=SECRET123&email=me%40example.org"
    with pytest.raises(DownloadError) as info:
        request_text(url, policy=FAST)
    assert "SECRET123" not in str(info.value) and "me@example.org" not in str(info.value)
    assert "api_key=***" in str(info.value)
    assert redact_url("https://user:pw@host/x?api_key=a&id=1") == "https://host/x?api_key=***&id=1"


def test_helpers():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    assert looks_like_html(b"\n  <!DOCTYPE html><html>") and not looks_like_html(b"<?xml version='1.0'?>")
    assert list(batched([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert RetryPolicy(backoff=1, max_backoff=5).delay(1) == 1 and RetryPolicy(backoff=1, max_backoff=5).delay(4) == 5


def test_response_cache(tmp_path):
    cache = ResponseCache(tmp_path / "c")
    key = {"endpoint": "esummary", "ids": ["1", "2"]}
    assert cache.get(key) is None
    cache.put(key, {"1": "a"})
    assert cache.get({"ids": ["1", "2"], "endpoint": "esummary"}) == {"1": "a"}
    assert len(cache) == 1
    cache.path(key).write_text("{broken")
    assert cache.get(key) is None
