"""The compiled head splitter (shardserve/shard/http/_head.c) against the pure-Python
reference it mirrors (head.py's ``split_head``).

For every head: the compiled one returns None (leaving it to the reference) or
exactly the reference's tuple; wherever the reference refuses a head, it returns None;
and the heads ordinary clients send, it takes.  CI also runs this module under
valgrind (.ci/run), which checks the C code's memory use on every case here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import ROOT
from shardserve.shard.http import head as head_module
from shardserve.shard.http.parser import Limits, ParseError

try:
    from shardserve.shard.http._head import split_head as compiled
except ImportError:  # pragma: no cover - CI builds it
    compiled = None

pytestmark = pytest.mark.skipif(compiled is None, reason="the compiled module is not built")
reference = head_module.split_head
# Under valgrind every example costs ~50x: fewer, same strategies.
EXAMPLES = int(os.environ.get("HEAD_SPLIT_EXAMPLES", "1500"))
LIMITS = [Limits(), Limits(request_line=64, fields=8, field_size=64)]


def outcome(head: bytes, limits: Limits):
    """(compiled result, reference result or the ParseError it raised)."""
    args = (limits.request_line, limits.field_size, limits.fields)
    try:
        expected = reference(head, *args)
    except ParseError as exc:
        expected = exc
    return compiled(head, *args), expected


def check(head: bytes, limits: Limits) -> object:
    fast, expected = outcome(head, limits)
    if isinstance(expected, ParseError):
        assert fast is None, (head, expected.reason, fast)
    elif fast is not None:
        assert fast == expected, (head, fast, expected)
        assert [type(x) for x in fast] == [type(x) for x in expected], head
        for name, value in fast[3]:
            assert type(name) is bytes and type(value) is bytes
    return fast


# What a head is made of, good and bad ------------------------------------------------------

COMMON_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
methods = st.sampled_from(
    [*COMMON_METHODS, "CONNECT", "get", "PROPFIND", "G@T", "", "GET GET"]
).map(str.encode)
targets = st.one_of(
    st.sampled_from(
        [b"/", b"/a?b=1", b"//x", b"*", b"http://h/p", b"h:80", b"/\t", b"/\xc3\xa9", b"", b"/%7E"]
    ),
    st.binary(max_size=12).map(lambda b: b"/" + b),
    st.text(alphabet="/abc?=&%.-~", max_size=80).map(lambda t: ("/" + t).encode()),
)
versions = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"HTTP/1.1 ", b"HTTP/11"]
)
names = st.one_of(
    st.sampled_from(
        [b"Host", b"host", b"HOST", b"Content-Length", b"Transfer-Encoding", b"Connection",
         b"Upgrade", b"User-Agent", b"Accept", b"X-Custom", b"Sec-WebSocket-Key", b"TE",
         b"", b"Bad Name", b"na\tme", b"n\xe9", b"a@b", b"Accept-Encoding"]
    ),
    st.text(alphabet="!#$%&'*+-.^_`|~azAZ09", min_size=1, max_size=20).map(str.encode),
    st.binary(min_size=1, max_size=6),
)  # fmt: skip
values = st.one_of(
    st.sampled_from(
        [
            b"",
            b"x",
            b" padded \t",
            b"chunked",
            b"close",
            b"10",
            b"a\x00b",
            b"\x7f",
            b"obs\xfftext",
            b"k=v, k2=v2",
            b"\tx",
        ]
    ),  # fmt: skip
    st.binary(max_size=20),
    st.text(alphabet=" \tabcXYZ019-,;=:/", max_size=90).map(str.encode),
)
separators = st.sampled_from([b":", b": ", b" :", b"", b"::"])
line_ends = st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n"])


@st.composite
def heads(draw) -> bytes:
    line = draw(methods) + b" " + draw(targets) + b" " + draw(versions)
    parts = [line]
    for _ in range(draw(st.integers(0, 10))):
        parts.append(draw(names) + draw(separators) + draw(values))
    ends = [draw(line_ends) for _ in parts[1:]]
    return parts[0] + b"".join(end + part for end, part in zip(ends, parts[1:], strict=True))


@st.composite
def ordinary_heads(draw) -> bytes:
    """What clients send: the compiled splitter must take every one."""
    method = draw(st.sampled_from(COMMON_METHODS)).encode()
    target = draw(st.text(alphabet="/abcxyz019?=&%.-_~", max_size=60)).encode()
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    fields = [(b"Host", draw(st.sampled_from([b"example.com", b"127.0.0.1:8000", b"a"])))]
    once = [b"Content-Length", b"Transfer-Encoding", b"Connection"]
    for name in draw(st.lists(st.sampled_from(once), unique=True)):
        fields.append((name, draw(st.sampled_from([b"0", b"chunked", b"keep-alive"]))))
    for _ in range(draw(st.integers(0, 12))):
        name = draw(st.text(alphabet="abcdefXYZ-_019", min_size=1, max_size=16)).encode()
        if name.lower() in {b"host", b"content-length", b"transfer-encoding", b"connection"}:
            continue
        fields.append((name, draw(st.text(alphabet=" \tabc,;=/019", max_size=40)).encode()))
    order = draw(st.permutations(fields))
    lines = [method + b" /" + target + b" " + version]
    lines += [name + b": " + value for name, value in order]
    return b"\r\n".join(lines)


# Tests --------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(heads(), st.sampled_from(LIMITS))
def test_the_compiled_splitter_agrees_with_the_reference(head, limits):
    check(head, limits)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(LIMITS))
def test_random_bytes_agree(head, limits):
    check(head, limits)


@settings(max_examples=EXAMPLES, deadline=None)
@given(ordinary_heads())
def test_ordinary_heads_take_the_compiled_path(head):
    fast, expected = outcome(head, Limits())
    assert not isinstance(expected, ParseError), (head, expected)
    assert fast is not None, head
    assert fast == expected


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: a",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b",  # (refused by the reference)
        b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: Upgrade",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade",
        b"GET / HTTP/1.1\r\nHost: a\r\n Folded: x",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb",
        b"GET / HTTP/1.1\r\nHost: a\nX: b",
        b"GET / HTTP/1.1\r\nHost: a\r\nX:\x01",
        b"GET / HTTP/1.1\r\nHost: a\r\nEmpty:",
        b"GET / HTTP/1.1\r\nHost: a\r\n:novalue",
        b"GET / HTTP/1.0",
        b"GET /" + b"a" * 8189 + b" HTTP/1.1\r\nHost: a",
        b"GET /" + b"a" * 8190 + b" HTTP/1.1\r\nHost: a",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 8190,
        b"GET / HTTP/1.1\r\nHost: a" + b"\r\nX: 1" * 100,
        b"CONNECT h:80 HTTP/1.1\r\nHost: h:80",
        b"OPTIONS * HTTP/1.1\r\nHost: a",
        b"GET http://a/ HTTP/1.1\r\nHost: a",
        b"",
        b"\r\n",
    ],
)
@pytest.mark.parametrize("limits", LIMITS)
def test_edge_cases_agree(head, limits):
    check(head, limits)


def test_a_typical_head_is_taken_and_split():
    head = b"GET /x?y=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: u\r\nContent-Length: 0\r\nX-A:  v \t"
    fast = compiled(head, 8190, 8190, 100)
    assert fast == (
        "GET", b"/x?y=1", "1.1",
        [(b"host", b"h"), (b"user-agent", b"u"), (b"content-length", b"0"), (b"x-a", b"v")],
        b"h", b"0", None, None, False,
    )  # fmt: skip


def test_wrong_arguments_raise_type_error():
    with pytest.raises(TypeError):
        compiled("GET / HTTP/1.1", 1, 1, 1)
    with pytest.raises(TypeError):
        compiled(b"GET / HTTP/1.1", 1, 1)


def test_the_environment_variable_selects_the_reference():
    probe = "from shardserve.shard.http import head; print(head.ACCELERATED)"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for value, expected in (("1", "False"), ("0", "True")):
        env["SHARDSERVE_PURE_PYTHON"] = value
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == expected, value


def test_no_object_is_leaked_on_any_path():
    """Taken, left mid-way (a repeated Host after other fields) and left at once:
    memory traced by tracemalloc does not grow with the number of calls."""
    import gc
    import tracemalloc

    heads = [  # (values longer than one byte: those are shared singletons)
        b"GET /a HTTP/1.1\r\nHost: hh\r\nContent-Length: 55\r\nX-Y: zz\r\nConnection: close",
        b"GET /a HTTP/1.1\r\nHost: hh\r\nX-Custom-Name: vv\r\nHost: again",
        b"GET /a HTTP/1.1\r\nHost: hh\r\nUpgrade: xx\r\nConnection: aa\r\nConnection: bb",
        b"BREW /a HTTP/1.1\r\nHost: hh",
    ]

    def calls(n: int) -> None:
        for _ in range(n):
            for head in heads:
                compiled(head, 8190, 8190, 100)

    calls(1000)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        calls(20000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes more after 80000 calls"
