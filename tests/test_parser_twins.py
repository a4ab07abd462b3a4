"""_conn.c's parser twins against the references they mirror: ParserTwins
(HttptoolsParser's feed and llhttp callbacks: parser_httptools.py's feed, on_url,
on_header, on_headers_complete, on_message_complete) and PythonTwins (PythonParser's
feed, parser_python.py).

Each example feeds the same bytes, cut the same way, to a parser with the twins and to
one with the references (a subclass: twins take only the exact class), and compares
what the sink was told, the error raised (status and reason), and the parser's state
after each read.  The inputs are test_parser_differential.py's: valid and
malformed request streams, pipelined, cut anywhere.  Ordinary requests must take the
compiled path; no object may leak.  CI runs this module under valgrind too.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardserve.shard.http import compiled, parser_python
from shardserve.shard.http.parser import INTERNED_METHODS, Limits, ParseError
from shardserve.shard.http.parser_python import PythonParser

httptools_module = pytest.importorskip("shardserve.shard.http.parser_httptools")
HttptoolsParser = httptools_module.HttptoolsParser

if type(HttptoolsParser.__dict__["on_url"]).__name__ != "Twin":
    pytest.skip("_conn.c not built (or SHARDSERVE_PURE_PYTHON=1)", allow_module_level=True)

from leaks import allocated_growth  # noqa: E402
from test_parser_differential import (  # noqa: E402
    SMALL,
    Recorder,
    split,
    streams,
    streams_and_cuts,
    valid_streams,
)

from shardserve.shard.http import _conn  # noqa: E402

EXAMPLES = int(os.environ.get("PARSER_TWINS_EXAMPLES", "600"))
STATE = {
    HttptoolsParser: ("url", "headers", "host", "last_host", "transfer_encoding", "in_head",
                      "in_message", "head_bytes", "chunk"),
    PythonParser: ("state", "buf", "scanned", "line_seen", "remaining", "upgrade", "last_host"),
}  # fmt: skip


ReferenceParser = compiled.reference_subclass(HttptoolsParser)
ReferencePythonParser = compiled.reference_subclass(PythonParser)
REFERENCES = {HttptoolsParser: ReferenceParser, PythonParser: ReferencePythonParser}
PARSERS = st.sampled_from([HttptoolsParser, PythonParser])


def outcome(parser_class: type, pieces: list[bytes], limits: Limits) -> tuple:
    names = STATE[HttptoolsParser if issubclass(parser_class, HttptoolsParser) else PythonParser]
    sink = Recorder()
    parser = parser_class(sink, limits)
    final: tuple = ("ok",)
    states = []  # the parser's state after each piece
    try:
        for piece in pieces:
            if sink.upgraded is not None:
                break
            sink.fed += len(piece)
            parser.feed(piece)
            states.append(tuple(getattr(parser, name, "<unset>") for name in names))
    except ParseError as exc:
        final = ("error", exc.status, exc.reason)
    except Exception as exc:  # noqa: BLE001 - compared: both must fail alike
        final = ("crash", type(exc).__name__, str(exc))
    state = tuple(getattr(parser, name, "<unset>") for name in names)
    if hasattr(parser, "release"):
        parser.release()
    return (sink.requests, sink.ends, sink.offered, sink.violations, final, state, states)


def assert_alike(pieces: list[bytes], limits: Limits, parser=HttptoolsParser) -> tuple:
    compiled = outcome(parser, pieces, limits)
    assert compiled == outcome(REFERENCES[parser], pieces, limits), pieces
    return compiled


LIMITS = st.sampled_from([Limits(), SMALL, Limits(request_line=16, fields=2, field_size=24)])
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(streams_and_cuts(), LIMITS, PARSERS)
def test_cut_streams(case, limits, parser):
    raw, pieces = case
    assert_alike([raw], limits, parser)
    assert_alike(pieces, limits, parser)


@SETTINGS
@given(streams, LIMITS, PARSERS)
def test_streams_whole(raw, limits, parser):
    assert_alike([raw], limits, parser)


@SETTINGS
@given(valid_streams(), st.lists(st.integers(0, 400), max_size=4), PARSERS)
def test_valid_streams(raw, cuts, parser):
    result = assert_alike(split(raw, cuts), Limits(), parser)
    assert result[4] == ("ok",) or result[4][0] != "crash", result


@SETTINGS
@given(valid_streams(), st.integers(1, 4))
def test_one_head_per_read(raw, repeat):
    """The reads PythonTwins takes: each one whole head (the first request of each
    valid stream, repeated as a keep-alive client sends it)."""
    end = raw.find(b"\r\n\r\n") + 4
    assert_alike([raw[:end]] * repeat, Limits(), PythonParser)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /x?y=1 HTTP/1.1\r\nHOST: a\r\nX-A: b \t\r\n\r\n" * 3,
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # 400: two Hosts
        b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n",  # 400: invalid Host
        b"GET / HTTP/1.1\r\n\r\n",  # 400: no Host
        b"GET / HTTP/1.0\r\n\r\n",
        b"CONNECT a:1 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        b"PURGE / HTTP/1.1\r\nHost: a\r\n\r\n",  # not an interned method
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Long-Name-Beyond-Thirty-Two-Bytes: v\r\n\r\n",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",  # 414
        b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 9000 + b"\r\n\r\n",  # 431
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: v\r\n" * 120 + b"\r\n",  # 431: too many
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # a leading empty line
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nrest",
    ],
)
@pytest.mark.parametrize("parser", [HttptoolsParser, PythonParser])
def test_edge_cases(raw, parser):
    for pieces in ([raw], [raw[:7], raw[7:]], [raw[i : i + 1] for i in range(min(len(raw), 300))]):
        assert_alike(pieces, Limits(), parser)
    assert_alike([raw, raw], Limits(), parser)


def counting_parser_class():
    """A subclass whose references count their calls, with twins made for it."""
    calls: list[str] = []

    def counted(name):
        reference = getattr(HttptoolsParser, "reference_" + name)

        def call(self, *args):
            calls.append(name)
            return reference(self, *args)

        return call

    namespace = {"__slots__": ()}
    for name in ("feed", "on_url", "on_header", "on_headers_complete", "on_message_complete"):
        namespace["reference_" + name] = counted(name)
    cls = type("CountingParser", (HttptoolsParser,), namespace)
    twins = _conn.ParserTwins(
        parser_class=cls, globals=vars(httptools_module), interned_methods=INTERNED_METHODS
    )
    for name in ("feed", "on_url", "on_header", "on_headers_complete", "on_message_complete"):
        setattr(cls, name, getattr(twins, name))
    return cls, calls


def test_ordinary_requests_take_the_compiled_path():
    cls, calls = counting_parser_class()
    raw = b"GET /a?b HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nUser-Agent: x\r\n\r\n"
    requests, _, _, violations, final, *_ = outcome(cls, [raw] * 5, Limits())
    assert final == ("ok",) and not violations and len(requests) == 5
    assert calls == []
    # A pipelined request after the first of a read: its version is not at the read's
    # start, so llhttp is asked (the reference's way).
    outcome(cls, [raw * 2], Limits())
    assert calls == ["on_headers_complete"]
    calls.clear()
    # ... and what they leave to the reference reaches it.
    outcome(cls, [b"GET / HTTP/1.0\r\n\r\n"], Limits())
    assert calls.count("on_headers_complete") == 1


def test_a_read_holding_one_head_takes_the_compiled_path():
    calls = []

    def counted(self, data):
        calls.append(data)
        return PythonParser.reference_feed(self, data)

    cls = type(
        "CountingPythonParser", (PythonParser,), {"__slots__": (), "reference_feed": counted}
    )
    cls.feed = _conn.PythonTwins(parser_class=cls, globals=vars(parser_python)).feed
    raw = b"GET /a?b HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
    requests, _, _, violations, final, *_ = outcome(cls, [raw] * 5, Limits())
    assert final == ("ok",) and not violations and len(requests) == 5
    assert calls == []
    body = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab"
    for other in (raw * 2, raw[:10], b"GET / HTTP/1.0\r\n\r\n", body):
        outcome(cls, [other], Limits())
        assert calls == [other]
        calls.clear()


def test_no_object_is_leaked():
    raws = [
        b"GET / HTTP/1.1\r\nHost: a\r\nX: y \r\n\r\n" * 20,
        b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" * 5,
    ]

    def many():
        for raw in raws:
            for _ in range(20):
                outcome(HttptoolsParser, [raw], Limits())
                outcome(PythonParser, [raw], Limits())
        for _ in range(20):
            outcome(PythonParser, [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"] * 5, Limits())

    grown = allocated_growth(many)
    assert grown < 32 * 1024, grown  # (a leaked header tuple per request: ~60 kB here)


def test_a_twin_called_through_its_class_is_the_method():
    """Class.method(obj, ...) works as for a function (and is what Python's method
    calls do with the twins: no bound object per call)."""
    sink = Recorder()
    parser = HttptoolsParser(sink, Limits())
    HttptoolsParser.feed(parser, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(sink.requests) == 1 and sink.requests[0][6]
    with pytest.raises(TypeError):
        HttptoolsParser.feed()
    parser.release()
