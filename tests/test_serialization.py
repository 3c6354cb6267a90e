"""Serializers and compression: round trips, kombu's exact bytes, and clear errors."""

from __future__ import annotations

import bz2
import uuid
import zlib
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu import compression as kombu_compression
from kombu import serialization as kombu_serialization

from taskframe.exceptions import ContentDisallowed, SerializationError
from taskframe.serialization import compress, decompress, dumps, loads

SPECIAL_VALUES: dict[str, Any] = {
    "aware": datetime(2026, 11, 22, 18, 10, 55, 174901, tzinfo=timezone.utc),
    "offset": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
    "naive": datetime(2026, 1, 2, 3, 4, 5, 6),
    "day": date(2026, 1, 2),
    "clock": time(13, 14, 15, 16),
    "id": uuid.UUID("12cfc94a-932d-4eb4-bfac-8d2ec5432454"),
    "price": Decimal("10.10"),
    "text_bytes": b"abc",
    "binary_bytes": b"\xff\x00\x80",
    "accented": "café",
}


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __json__(self) -> dict[str, int]:
        return {"x": self.x}


class Opaque:
    pass


def test_json_round_trips_kombu_types() -> None:
    data, content_type, content_encoding = dumps(SPECIAL_VALUES, "json")

    assert (content_type, content_encoding) == ("application/json", "utf-8")
    assert loads(data, content_type, content_encoding, ["json"]) == SPECIAL_VALUES


def test_json_bytes_equal_kombus() -> None:
    value = {"args": [2, 2], "values": SPECIAL_VALUES, "nested": {"a": (1, 2)}}

    ours = dumps(value, "json")[0]
    _, _, theirs = kombu_serialization.dumps(value, serializer="json")

    assert ours == theirs.encode("utf-8")


def test_json_uses_python_default_separators_and_ascii() -> None:
    assert dumps({"a": [1, "é"]}, "json")[0] == b'{"a": [1, "\\u00e9"]}'


def test_kombu_reads_ours_and_we_read_kombus() -> None:
    ours = dumps(SPECIAL_VALUES, "json")
    content_type, encoding, theirs = kombu_serialization.dumps(SPECIAL_VALUES, serializer="json")

    assert kombu_serialization.loads(ours[0], ours[1], ours[2]) == SPECIAL_VALUES
    assert loads(theirs.encode(), content_type, encoding, ["json"]) == SPECIAL_VALUES


def test_json_markers_match_kombu_format() -> None:
    data = dumps([uuid.UUID(int=1), b"\xff", Decimal("1.5")], "json")[0]

    assert data == (
        b'[{"__type__": "uuid", "__value__": {"hex": "00000000000000000000000000000001"}}, '
        b'{"__type__": "base64", "__value__": "/w=="}, '
        b'{"__type__": "decimal", "__value__": "1.5"}]'
    )


def test_json_uses_dunder_json_reducer() -> None:
    assert dumps(Point(3), "json")[0] == b'{"x": 3}'


def test_json_leaves_unknown_marker_as_plain_dict() -> None:
    data = b'{"__type__": "mystery", "__value__": 1}'

    assert loads(data, "application/json", "utf-8", ["json"]) == {
        "__type__": "mystery",
        "__value__": 1,
    }


def test_json_refuses_unknown_type_with_its_name() -> None:
    with pytest.raises(SerializationError, match="object of type Opaque is not JSON serializable"):
        dumps([Opaque()], "json")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.binary(max_size=20)
    | st.datetimes(timezones=st.just(timezone.utc))
    | st.uuids()
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(json_values)
def test_json_round_trip_property(value: Any) -> None:
    data, content_type, encoding = dumps(value, "json")

    assert loads(data, content_type, encoding, ["application/json"]) == value


def test_msgpack_matches_kombu_and_round_trips() -> None:
    value = [[2, 2], {"k": b"\x00raw"}, {"callbacks": None, "chain": None}]

    data, content_type, encoding = dumps(value, "msgpack")
    _, _, theirs = kombu_serialization.dumps(value, serializer="msgpack")

    assert (content_type, encoding) == ("application/x-msgpack", "binary")
    assert data == theirs
    assert loads(data, content_type, encoding, ["msgpack"]) == value


def test_msgpack_refuses_datetime_like_kombu() -> None:
    with pytest.raises(SerializationError, match=r"msgpack.*datetime"):
        dumps([datetime(2026, 1, 1)], "msgpack")


def test_pickle_round_trips_when_accepted() -> None:
    value = {"opaque": {1, 2}, "when": SPECIAL_VALUES["aware"]}

    data, content_type, encoding = dumps(value, "pickle")

    assert content_type == "application/x-python-serialize"
    assert loads(data, content_type, encoding, ["json", "pickle"]) == value


def test_pickle_refused_unless_accepted() -> None:
    data, content_type, encoding = dumps([1], "pickle")

    with pytest.raises(ContentDisallowed) as raised:
        loads(data, content_type, encoding, ["json"])

    assert "application/x-python-serialize" in str(raised.value)
    assert "['json']" in str(raised.value)


def test_accept_takes_content_types() -> None:
    data, content_type, encoding = dumps([1], "msgpack")

    assert loads(data, content_type, encoding, {"application/x-msgpack"}) == [1]


def test_unknown_serializer_names_the_known_ones() -> None:
    with pytest.raises(SerializationError, match=r"unknown serializer 'yaml'.*json"):
        dumps([1], "yaml")


def test_undecodable_data_says_what_and_where() -> None:
    with pytest.raises(SerializationError, match="cannot decode 9 bytes of application/json"):
        loads(b"[1, 2, oo", "application/json", "utf-8", ["json"])


def test_accepted_type_without_decoder() -> None:
    with pytest.raises(SerializationError, match="no decoder for content type"):
        loads(b"a: 1", "application/x-yaml", "utf-8", ["yaml"])


@pytest.mark.parametrize(
    ("method", "header"),
    [
        ("gzip", "application/x-gzip"),
        ("zlib", "application/x-gzip"),
        ("bzip2", "application/x-bz2"),
        ("lzma", "application/x-lzma"),
        ("xz", "application/x-lzma"),
    ],
)
def test_compression_round_trip_and_kombu_reads_it(method: str, header: str) -> None:
    body = b'[[2, 2], {}, {"callbacks": null}]' * 10

    compressed, got_header = compress(body, method)

    assert got_header == header
    assert decompress(compressed, header) == body
    assert kombu_compression.decompress(compressed, header) == body


def test_gzip_header_means_a_zlib_stream() -> None:
    compressed, _ = compress(b"hello", "gzip")

    assert compressed == zlib.compress(b"hello")
    assert compressed[:2] == b"\x78\x9c"


def test_decompress_reads_kombus_bz2() -> None:
    compressed, header = kombu_compression.compress(b"payload", "bzip2")

    assert decompress(compressed, header) == bz2.decompress(compressed) == b"payload"


def test_corrupt_compressed_data_raises_serialization_error() -> None:
    with pytest.raises(SerializationError, match="cannot decompress 4 bytes marked"):
        decompress(b"nope", "application/x-gzip")


def test_unknown_compression_lists_known() -> None:
    with pytest.raises(SerializationError, match=r"unknown compression 'snappy'.*gzip"):
        compress(b"x", "snappy")
