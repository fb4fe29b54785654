"""The socket-map protocol without I/O (meta1.maps.sockmap, meta1.maps.states): requests
(B23), replies (B24-B28), malformed netstrings (B29), one connection's exchange, and
Hypothesis properties of the netstring framing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meta1.maps.base import Status
from meta1.maps.sockmap import (
    MAX_NETSTRING, Answer, NetstringDecoder, SockmapConnection, encode_request, netstring, parse_reply,
)
from meta1.maps.states import TABLE, Input, State


def test_b23_request_encoding() -> None:
    assert encode_request("aliases", "news") == b"12:aliases news,"
    assert encode_request("m", "") == b"2:m ,"
    assert encode_request("m", "k\u00e9y") == b"6:m k\xc3\xa9y,"     # lengths count bytes
    assert encode_request("m", "a key with spaces") == b"19:m a key with spaces,"


@pytest.mark.parametrize("mapname", ["", "two words", "tab\there"])
def test_a_map_name_with_whitespace_cannot_be_sent(mapname) -> None:
    with pytest.raises(ValueError):
        encode_request(mapname, "k")


def test_a_request_longer_than_the_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than"):
        encode_request("m", "x" * MAX_NETSTRING)


@pytest.mark.parametrize("payload,status,value,reason", [
    (b"OK root@domain.net", Status.FOUND, "root@domain.net", ""),        # B24
    (b"OK", Status.FOUND, "", ""),
    (b"OK a value  with spaces ", Status.FOUND, "a value  with spaces ", ""),
    (b"NOTFOUND", Status.NOTFOUND, "", ""),                              # B25
    (b"NOTFOUND no such user", Status.NOTFOUND, "", ""),
    (b"NOMORE", Status.NOMORE, "", ""),                                  # B26
    (b"TEMP database down", Status.TEMP, "", "database down"),       # B27
    (b"TIMEOUT", Status.TEMP, "", "TIMEOUT"),
    (b"TIMEOUT ldap slow", Status.TEMP, "", "TIMEOUT ldap slow"),
    (b"PERM no such map", Status.PERM, "", "no such map"),           # B28
    (b"OK caf\xc3\xa9", Status.FOUND, "caf\u00e9", ""),
])
def test_replies(payload, status, value, reason) -> None:
    result = parse_reply(payload)
    assert (result.status, result.value, result.reason) == (status, value, reason)


def test_b24_b25_framed_examples_of_the_smap_manual() -> None:
    decoder = NetstringDecoder()
    payloads = decoder.feed(b"18:OK root@domain.net,8:NOTFOUND,")
    assert [parse_reply(p).status for p in payloads] == [Status.FOUND, Status.NOTFOUND]
    assert parse_reply(payloads[0]).value == "root@domain.net" and decoder.error is None


@pytest.mark.parametrize("payload", [b"OKAY x", b"ok x", b"", b" OK", b"FOUND x", b"OK \xff"])
def test_unknown_status_or_bad_text_is_malformed(payload) -> None:
    from meta1.maps.sockmap import Malformed
    with pytest.raises(Malformed):
        parse_reply(payload)


@pytest.mark.parametrize("stream,why", [
    (b"x:OK,", "bad netstring length"),
    (b"01:x,", "bad netstring length"),                       # leading zero
    (b"-1:x,", "bad netstring length"),
    (b"3:OK,\r\n", "not followed by ','"),                     # length mismatch (too long)
    (b"1:OK,", "not followed by ','"),                         # length mismatch (too short)
    (b"2:OK;", "not followed by ','"),                         # missing comma
    (b"1234567:", "bad netstring length"),                     # more digits than the bound has
    (b"102401:", "longer than 102400"),                        # refused before the payload comes
    (b"1234567", "bad netstring length"),                      # no colon within the digits allowed
])
def test_b29_malformed_netstrings(stream, why) -> None:
    decoder = NetstringDecoder()
    assert decoder.feed(stream) == []
    assert decoder.error is not None and why in str(decoder.error)
    assert decoder.feed(b"2:OK,") == []                        # broken for good


def test_payloads_before_a_malformation_are_kept() -> None:
    decoder = NetstringDecoder()
    assert decoder.feed(b"2:OK,8:NOTFOUND;") == [b"OK"]
    assert decoder.error is not None


def test_a_reply_at_the_bound_is_accepted() -> None:
    payload = b"OK " + b"v" * (MAX_NETSTRING - 3)
    assert NetstringDecoder().feed(netstring(payload)) == [payload]


@given(st.lists(st.binary(max_size=300), max_size=12), st.lists(st.integers(1, 50), max_size=40))
def test_property_netstrings_round_trip_in_any_pieces(payloads, cuts) -> None:
    stream = b"".join(netstring(p) for p in payloads)
    decoder, out, position = NetstringDecoder(), [], 0
    for cut in cuts + [len(stream)]:
        out += decoder.feed(stream[position:position + cut])
        position += cut
        if position >= len(stream):
            break
    out += decoder.feed(stream[position:])
    assert out == payloads and decoder.error is None and not decoder.pending


@given(st.binary(max_size=200))
def test_property_any_bytes_give_payloads_or_an_error_never_an_exception(data) -> None:
    decoder = NetstringDecoder(limit=100)
    for payload in decoder.feed(data):
        assert len(payload) <= 100
        try:
            parse_reply(payload)
        except Exception as exc:
            assert type(exc).__name__ == "Malformed"


@given(st.text(max_size=50), st.text(st.characters(blacklist_categories=("Cs",)), max_size=50))
def test_property_request_payload_is_mapname_space_key(key, value) -> None:
    wire = encode_request("aliases", key)
    (payload,) = NetstringDecoder().feed(wire)
    assert payload.decode() == f"aliases {key}"
    assert parse_reply(f"OK {value}".encode()).value == value


# -- one connection's exchange ------------------------------------------------------------


def connection(trace=None) -> SockmapConnection:
    conn = SockmapConnection("aliases", instance="aliases#1", trace=trace)
    conn.connected()
    return conn


def test_request_and_reply_in_pieces() -> None:
    records = []
    conn = connection(records.append)
    assert conn.send("r1", "news") == b"12:aliases news,"
    assert conn.state is State.WAITING
    assert conn.received(b"18:OK root@do") is None
    answer = conn.received(b"main.net,")
    assert answer == Answer("r1", parse_reply(b"OK root@domain.net"))
    assert conn.idle and conn.served == 1
    assert [(r["old"], r["input"], r["new"]) for r in records] == [
        ("CONNECTING", "CONNECTED", "IDLE"), ("IDLE", "SEND", "WAITING"), ("WAITING", "REPLY", "IDLE")]
    assert records[0]["machine"] == "sockmap-connection" and records[0]["daemon"] == "smar"


def test_b29_a_malformed_reply_fails_the_request_temporarily_and_ends_the_connection() -> None:
    conn = connection()
    conn.send("r1", "news")
    assert conn.received(b"5:OK,") is None               # too long a length: waits for more
    answer = conn.received(b"\r\n\r\n")
    assert answer.request == "r1" and answer.result.status is Status.TEMP
    assert "malformed reply" in answer.result.reason and conn.closed


def test_an_unknown_status_is_malformed() -> None:
    conn = connection()
    conn.send("r1", "news")
    answer = conn.received(b"5:MAYBE,")
    assert answer.result.status is Status.TEMP and "unknown status" in answer.result.reason and conn.closed


def test_a_timeout_fails_temporarily_and_ends_the_connection() -> None:
    conn = connection()
    conn.send("r1", "news")
    conn.received(b"18:OK root")
    answer = conn.timed_out()
    assert (answer.request, answer.result.status) == ("r1", Status.TEMP) and conn.closed
    assert "no reply within the timeout" in answer.result.reason


def test_unsolicited_bytes_end_an_idle_connection_without_an_answer() -> None:
    conn = connection()
    assert conn.received(b"8:NOTFOUND,") is None and conn.closed and conn.why == "unsolicited reply"
    conn = connection()
    assert conn.received(b"8:NOT") is None and conn.closed and conn.why == "unsolicited bytes"


def test_a_second_reply_answers_the_first_request_then_ends_the_connection() -> None:
    conn = connection()
    conn.send("r1", "news")
    answer = conn.received(b"2:OK,8:NOTFOUND,")
    assert answer.result.status is Status.FOUND and conn.closed


def test_lost_on_a_reused_connection_without_a_byte_of_reply_is_retried() -> None:
    conn = connection()
    conn.send("r1", "a")
    conn.received(b"8:NOTFOUND,")
    conn.send("r2", "b")
    assert conn.lost("closed by the server") == Answer("r2", None, retry=True)


def test_lost_on_a_fresh_connection_or_mid_reply_is_temporary() -> None:
    conn = connection()
    conn.send("r1", "a")
    answer = conn.lost("closed by the server")
    assert (answer.result.status, answer.retry) == (Status.TEMP, False)
    conn = connection()
    conn.send("r1", "a")
    conn.received(b"8:NOTFOUND,")
    conn.send("r2", "b")
    conn.received(b"8:NOT")
    assert conn.lost("reset").result.status is Status.TEMP


def test_closing_abandons_the_request_in_flight_temporarily() -> None:
    conn = connection()
    conn.send("r1", "a")
    assert conn.close("shutdown").result.status is Status.TEMP
    assert conn.close() is None and conn.lost("x") is None


def test_connect_failure() -> None:
    conn = SockmapConnection("m")
    conn.connect_failed("Connection refused")
    assert conn.closed and conn.why == "Connection refused"


def test_every_network_input_is_handled_while_connected() -> None:
    for state in (State.IDLE, State.WAITING):
        for input in (Input.REPLY, Input.MALFORMED, Input.LOST, Input.CLOSE):
            assert (state, input) in TABLE
    assert not any(state is State.CLOSED for state, _ in TABLE)
