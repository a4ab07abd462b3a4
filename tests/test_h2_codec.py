"""shard/h2/codec.py against the hpack package: the lean decoder must read every
header block exactly as hpack's does (same headers, same dynamic table, an error
where hpack errs), and what the lean encoder writes must decode to what it was given.
Seeded, bounded loops: the same cases every run."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("h2")

from hpack import Decoder, Encoder, NeverIndexedHeaderTuple  # noqa: E402
from hpack.exceptions import (  # noqa: E402
    HPACKDecodingError,
    HPACKError,
    InvalidTableIndexError,
    InvalidTableSizeError,
    OversizedHeaderListError,
)

from shardserve.shard.h2.codec import LeanDecoder, LeanEncoder  # noqa: E402

# What h2 turns into a connection error (h2.connection._decode_headers).
DECODE_ERRORS = (HPACKError, IndexError, TypeError, UnicodeDecodeError)

NAMES = [
    b":method", b":path", b":scheme", b":authority", b":status", b"accept",
    b"accept-encoding", b"cookie", b"user-agent", b"content-type", b"content-length",
    b"x-request-id", b"x-custom-header-with-a-long-name", b"date", b"server", b"via",
]  # fmt: skip


def random_headers(rng: random.Random) -> list[tuple[bytes, bytes]]:
    headers = []
    for _ in range(rng.randint(0, 12)):
        name = (
            rng.choice(NAMES)
            if rng.random() < 0.8
            else bytes(
                rng.choice(b"abcdefghijklmnopqrstuvwxyz-") for _ in range(rng.randint(1, 40))
            )
        )
        size = rng.choice([0, 1, 5, 20, 126, 127, 128, 300, 2000])
        value = bytes(rng.randrange(0x20, 0x7F) for _ in range(size))
        if rng.random() < 0.3 and headers:
            name, value = rng.choice(headers)  # (repeats: found in the dynamic table)
        headers.append((name, value))
    return headers


def as_pairs(headers) -> list[tuple[bytes, bytes]]:
    return [(bytes(name), bytes(value)) for name, value in headers]


def decode_both(lean: Decoder, reference: Decoder, block: bytes):
    """(lean's result or error type, hpack's result or error type)."""
    outcomes = []
    for decoder in (lean, reference):
        try:
            outcomes.append(as_pairs(decoder.decode(block, raw=True)))
        except DECODE_ERRORS as exc:
            outcomes.append(type(exc))
    return outcomes


@pytest.mark.parametrize("huffman", [True, False])
def test_decoder_reads_what_hpack_reads_across_a_connection(huffman: bool) -> None:
    rng = random.Random(1604 + huffman)
    encoder, lean, reference = Encoder(), LeanDecoder(), Decoder()
    for block_number in range(400):
        if block_number % 50 == 49:  # the table resized (a size update starts a block)
            size = rng.choice([0, 256, 1024, 4096])
            encoder.header_table_size = size
        headers = random_headers(rng)
        if rng.random() < 0.2 and headers:
            headers[0] = NeverIndexedHeaderTuple(*headers[0])
        block = encoder.encode(headers, huffman=huffman)
        mine, theirs = decode_both(lean, reference, block)
        assert mine == theirs == as_pairs(headers)
        assert list(lean.header_table.dynamic_entries) == list(
            reference.header_table.dynamic_entries
        )
        assert lean.header_table.maxsize == reference.header_table.maxsize


def test_decoder_fails_where_hpack_fails() -> None:
    """Truncated and corrupted blocks, and random bytes: an error where hpack's
    decoder errs (h2 makes it COMPRESSION_ERROR), the same headers where it does not."""
    rng = random.Random(20261130)
    compared = errors = 0
    for case in range(3000):
        encoder = Encoder()
        block = encoder.encode(random_headers(rng), huffman=rng.random() < 0.5)
        if case % 3 == 0:
            block = block[: rng.randrange(len(block) + 1)]
        elif case % 3 == 1 and block:
            corrupted = bytearray(block)
            for _ in range(rng.randint(1, 4)):
                corrupted[rng.randrange(len(corrupted))] = rng.randrange(256)
            block = bytes(corrupted)
        else:
            block = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        lean, reference = LeanDecoder(), Decoder()
        mine, theirs = decode_both(lean, reference, block)
        if mine is HPACKDecodingError and theirs is not HPACKDecodingError:
            # The one bound hpack lacks: integers longer than 28 bits.
            with pytest.raises(HPACKDecodingError, match="Integer too long"):
                LeanDecoder().decode(block, raw=True)
            continue
        if isinstance(theirs, type):
            assert isinstance(mine, type), (block, mine, theirs)
            errors += 1
        else:
            assert mine == theirs, block
        compared += 1
    assert compared > 2900 and errors > 500  # (the cases did reach both outcomes)


def test_decoder_limits() -> None:
    decoder = LeanDecoder()
    decoder.max_header_list_size = 100
    # 70-byte value + name + 32 > 100 once two are listed: an HPACK bomb's signature.
    block = Encoder().encode([(b"x-a", b"v" * 40), (b"x-a", b"v" * 40)], huffman=False)
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(block, raw=True)
    with pytest.raises(InvalidTableIndexError):
        LeanDecoder().decode(b"\xbe", raw=True)  # index 62: the dynamic table is empty
    with pytest.raises(InvalidTableIndexError):
        LeanDecoder().decode(b"\x80", raw=True)  # index 0
    capped = LeanDecoder()
    capped.max_allowed_table_size = 100
    with pytest.raises(InvalidTableSizeError):
        capped.decode(b"\x3f\xe1\x1f", raw=True)  # size update to 4096 > 100
    with pytest.raises(HPACKDecodingError, match="not at the start"):
        LeanDecoder().decode(b"\x82\x20", raw=True)
    with pytest.raises(HPACKDecodingError, match="Integer too long"):
        LeanDecoder().decode(b"\xff" + b"\xff" * 8 + b"\x01", raw=True)
    with pytest.raises(HPACKDecodingError):
        LeanDecoder().decode(b"\x00\x85\xff\xff", raw=True)  # Huffman name cut short


def test_decoder_huffman_strings_cached_and_checked() -> None:
    block = Encoder().encode([(b"x-trace", b"abcdefgh" * 4)], huffman=True)
    for _ in range(3):  # (the second and third come from the cache)
        assert LeanDecoder().decode(block, raw=True) == [(b"x-trace", b"abcdefgh" * 4)]
    # EOS padding longer than 7 bits: invalid Huffman, whether or not cached.
    for _ in range(2):
        with pytest.raises(HPACKDecodingError):
            LeanDecoder().decode(b"\x00\x81\xff\x81\xff", raw=True)


def test_decoder_non_raw_is_hpack_s() -> None:
    block = Encoder().encode([(b"x-a", b"b")])
    assert [tuple(h) for h in LeanDecoder().decode(block)] == [("x-a", "b")]


def test_encoder_round_trips_through_hpack() -> None:
    rng = random.Random(7)
    encoder, reference = LeanEncoder(), Decoder()
    for block_number in range(300):
        headers = random_headers(rng)
        if rng.random() < 0.5:
            headers.insert(0, (b":status", rng.choice([b"200", b"404", b"500", b"418", b"103"])))
        block = encoder.encode(headers)
        assert block.startswith(b"\x20") == (block_number == 0)  # table size 0, once
        assert as_pairs(reference.decode(block, raw=True)) == headers
        assert not reference.header_table.dynamic_entries  # nothing was indexed
    # The client may lower its table size at any time: nothing to keep in step.
    encoder.header_table_size = 0
    assert as_pairs(reference.decode(encoder.encode([(b"a", b"b")]), raw=True)) == [(b"a", b"b")]


def test_encoder_indexes_common_statuses_in_one_byte() -> None:
    encoder = LeanEncoder()
    encoder.encode([])
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
    assert encoder.encode([(b":status", b"404")]) == b"\x8d"
    assert encoder.encode([(b":status", b"418")]) == b"\x08\x03418"


def test_decoder_repeated_block_follows_the_dynamic_table() -> None:
    """A repeated block may be answered from the last decode only while the table it
    refers to is unchanged."""
    lean, reference = LeanDecoder(), Decoder()

    def insert(name: bytes, value: bytes) -> bytes:  # literal with incremental indexing
        return b"\x40" + bytes((len(name),)) + name + bytes((len(value),)) + value

    newest = b"\xbe"  # indexed field 62: the newest dynamic entry
    steps = [
        (insert(b"x-a", b"1"), [(b"x-a", b"1")]),
        (newest, [(b"x-a", b"1")]),
        (newest, [(b"x-a", b"1")]),  # (from the last decode)
        (insert(b"x-b", b"2"), [(b"x-b", b"2")]),
        (newest, [(b"x-b", b"2")]),  # same bytes, another table: decoded afresh
        (b"\x3f\xe1\x1f" + newest, [(b"x-b", b"2")]),  # size update to 4096: no eviction
    ]
    for block, expected in steps:
        mine, theirs = decode_both(lean, reference, block)
        assert mine == theirs == expected, block
    # A resize that empties the table: the cached answer must not come back.
    for decoder in (lean, reference):
        decoder.decode(b"\x20", raw=True)
    for outcome in decode_both(lean, reference, newest):
        assert issubclass(outcome, InvalidTableIndexError), outcome


def test_codec_caches_stay_bounded_whatever_a_client_sends() -> None:
    """A client sending ever new Huffman strings, or an app ever new header names,
    cannot grow the shard's caches past their bounds."""
    from shardserve.shard.h2 import codec

    encoder, decoder = Encoder(), LeanDecoder()
    for i in range(3 * codec._HUFFMAN_CACHE_MAX):
        block = encoder.encode([(b"x-n", b"value-%d" % i)], huffman=True)
        decoder.decode(block, raw=True)
        assert len(codec._HUFFMAN_CACHE) <= codec._HUFFMAN_CACHE_MAX
    lean = LeanEncoder()
    for i in range(2000):
        lean.encode([(b"x-app-name-%d" % i, b"v")])
    assert len(codec._NAME_PREFIXES) <= codec._NAME_PREFIXES_MAX
