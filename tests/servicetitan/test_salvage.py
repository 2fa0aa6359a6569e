"""The page splitter: exact element spans of `data`, whole-body refusal of anything incomplete."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest

from stsync_daemon.servicetitan import UnreadableRecord
from stsync_daemon.servicetitan.salvage import record_id, salvage_page, split_page

TRICKY_STRINGS = [
    "",
    "]",
    "}",
    ",",
    '"',
    "\\",
    '\\"',
    '"]},{"id":1}',
    "a, b] c} d{ e[",
    "é ü 漢字 🙂",
    "tab\there\nnewline",
    "\u0001\u001f",
    "back\\slash at end\\",
]


def elements(body: bytes) -> list[bytes]:
    split = split_page(body)
    assert split is not None, body
    return [body[i:end] for i, end in split[1]]


def test_elements_are_cut_exactly_around_each_record() -> None:
    body = (
        b'{"hasMore":true,"continueFrom":"abc","data":['
        b'{"id":1,"tags":[1,[2,{"x":"]"}]],"o":{"p":{"q":[]}}},'
        b'{"id":2,"s":"} ] , \\" \\\\ \\u00e9 \\ud83d\\ude42"},'
        b"[1,2,3],"
        b'"just a string",'
        b"42,"
        b"null,"
        b"true"
        b"]}"
    )
    parts = elements(body)
    assert parts == [
        b'{"id":1,"tags":[1,[2,{"x":"]"}]],"o":{"p":{"q":[]}}}',
        b'{"id":2,"s":"} ] , \\" \\\\ \\u00e9 \\ud83d\\ude42"}',
        b"[1,2,3]",
        b'"just a string"',
        b"42",
        b"null",
        b"true",
    ]
    assert [orjson.loads(p) for p in parts] == orjson.loads(body)["data"]
    envelope, _ = split_page(body)  # type: ignore[misc]
    assert {k: body[i:end] for k, (i, end) in envelope.items()} == {
        b"hasMore": b"true",
        b"continueFrom": b'"abc"',
    }


def test_whitespace_everywhere_and_data_not_first() -> None:
    body = (
        b' \r\n\t{ "data" :\n [ \t{ "id" : 7 , "a" : [ 1 , 2 ] } ,\n\n'
        b'  { "id":8 }  ] , "hasMore" : false ,\t"continueFrom" : null\n}\n '
    )
    assert elements(body) == [b'{ "id" : 7 , "a" : [ 1 , 2 ] }', b'{ "id":8 }']
    salvaged = salvage_page(body)
    assert salvaged is not None
    doc, unreadable = salvaged
    assert doc == orjson.loads(body) and unreadable == ()


@pytest.mark.parametrize(
    "body",
    [
        b'{"hasMore":false,"continueFrom":"x","data":[]}',
        b'{"data":[ ],"hasMore":false}',
        b'{"data":[\n]}',
    ],
)
def test_an_empty_data_array(body: bytes) -> None:
    assert elements(body) == []
    assert salvage_page(body) == (orjson.loads(body), ())


def test_every_prefix_of_a_page_is_refused() -> None:
    body = orjson.dumps(
        {
            "hasMore": True,
            "continueFrom": "tok,]}",
            "data": [
                {"id": 1, "name": s, "nested": {"list": [s, {"deep": [s]}]}, "n": -1.5e3}
                for s in TRICKY_STRINGS
            ],
        }
    )
    assert split_page(body) is not None
    for cut in range(len(body)):
        assert split_page(body[:cut]) is None, body[:cut]
        assert salvage_page(body[:cut]) is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"<html><body>Bad gateway</body></html>",
        b"[]",
        b"null",
        b'"data"',
        b"{}",
        b'{"hasMore":true}',
        b'{"data":5}',
        b'{"data":{"a":1}}',
        b'{"data":"[1,2]"}',
        b'{"data":[1,]}',
        b'{"data":[,1]}',
        b'{"data":[1 2]}',
        b'{"data":[{"a":1]}]}',
        b'{"data":[[1}]}',
        b'{"data":[1]} x',
        b'{"data":[1]}{"data":[2]}',
        b'{"data":[1],}',
        b'{"data" [1]}',
        b"{data:[1]}",
        b'{"data":[1] "hasMore":true}',
        b'{"data":[1"a"]}',
        b'{"data":["unterminated]}',
        b'{"data":["ends in an escape\\',
        b'{"data":[1e400',
        b'{"data":[1],"data":2}',
    ],
)
def test_anything_but_a_complete_object_with_a_data_array_is_refused(body: bytes) -> None:
    assert split_page(body) is None
    assert salvage_page(body) is None


def test_the_last_data_key_wins_as_when_decoding() -> None:
    body = b'{"data":5,"data":[{"id":1},{"id":2}]}'
    assert elements(body) == [b'{"id":1}', b'{"id":2}']


def _random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice(TRICKY_STRINGS)
    if kind == 1:
        return rng.randint(-(2**63), 2**63 - 1)
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return "".join(rng.choice('ab"\\]},[{: é') for _ in range(rng.randrange(8)))
    if kind == 5:
        return rng.choice([0, -1, 1e-7, 1.5e300])
    if kind in (6, 7):
        return {
            rng.choice(TRICKY_STRINGS) + str(k): _random_value(rng, depth + 1)
            for k in range(rng.randrange(5))
        }
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]


@pytest.mark.parametrize("seed", range(40))
def test_random_pages_split_into_exactly_their_records(seed: int) -> None:
    rng = random.Random(seed)
    data = [_random_value(rng, 1) for _ in range(rng.randrange(12))]
    page = {"hasMore": rng.random() < 0.5, "continueFrom": "t", "data": data}
    if rng.random() < 0.5:
        page = {"data": data, **{k: v for k, v in page.items() if k != "data"}}
    for body in (
        orjson.dumps(page),
        json.dumps(page, indent=rng.choice([None, 1, 4]), ensure_ascii=rng.random() < 0.5).encode(),
        json.dumps(page, separators=(" ,\n ", " :\t")).encode(),
    ):
        parts = elements(body)
        assert [orjson.loads(p) for p in parts] == data
        assert all(p == p.strip() for p in parts)
        assert salvage_page(body) == (orjson.loads(body), ())


def test_records_that_do_not_decode_are_kept_byte_for_byte() -> None:
    good = b'{"id":1,"name":"fine","modifiedOn":"2024-01-01T00:00:00Z"}'
    surrogate = b'{"id":2,"name":"a\\ud800b","customer":{"id":99}}'
    overflow = b'{ "customer" : { "id" : 98 } , "id" : -3 , "creditLimit" : 1e999999 }'
    huge = b'{"id":4,"taxRate":1e400}'
    no_id = b'{"name":"\\udc00"}'
    text_id = b'{"id":"5","x":1e400}'
    scalar = b"1e400"
    body = b'{"hasMore":true,"continueFrom":"c","data":[%s]}' % b",".join(
        [good, surrogate, overflow, huge, no_id, text_id, scalar, good]
    )
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    salvaged = salvage_page(body)
    assert salvaged is not None
    doc, unreadable = salvaged
    assert doc == {
        "hasMore": True,
        "continueFrom": "c",
        "data": [orjson.loads(good), orjson.loads(good)],
    }
    assert unreadable == (
        UnreadableRecord(raw=surrogate, reason="no low surrogate in string", record_id="2"),
        UnreadableRecord(
            raw=overflow, reason="number is infinity when parsed as double", record_id="-3"
        ),
        UnreadableRecord(
            raw=huge, reason="number is infinity when parsed as double", record_id="4"
        ),
        UnreadableRecord(raw=no_id, reason="invalid high surrogate in string", record_id=None),
        UnreadableRecord(
            raw=text_id, reason="number is infinity when parsed as double", record_id=None
        ),
        UnreadableRecord(
            raw=scalar, reason="number is infinity when parsed as double", record_id=None
        ),
    )


def test_an_unreadable_envelope_refuses_the_page() -> None:
    assert salvage_page(b'{"hasMore":true,"continueFrom":"\\ud800","data":[{"id":1}]}') is None
    assert salvage_page(b'{"hasMore":1e400,"data":[]}') is None


def test_big_integers_are_left_to_the_decoder() -> None:
    """orjson reads integers beyond 64 bits as floats: such a page decodes and needs no salvage."""
    body = b'{"hasMore":false,"data":[{"id":1,"creditLimit":92233720368547758070}]}'
    assert orjson.loads(body)["data"][0]["creditLimit"] == pytest.approx(9.223372036854776e19)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"id":12}', "12"),
        (b'{"id" : -7, "x": 1}', "-7"),
        (b'{"customer":{"id":5},"items":[{"id":6}],"id":7}', "7"),
        (b'{"customer":{"id":5}}', None),
        (b'{"id":1.5}', None),
        (b'{"id":"12"}', None),
        (b'{"id":null}', None),
        (b'{"identifier":3}', None),
        (b'{"note":"\\"id\\":4","id":8}', "8"),
        (b'{"note":"\\"id\\":4"}', None),
        (b"[1,2]", None),
        (b'{"id":12', None),
    ],
)
def test_record_id_is_read_from_the_top_level_only(raw: bytes, expected: str | None) -> None:
    assert record_id(raw) == expected
