"""The pure parts of --framed, the handler's own close and --passstderr, as
tables: the record reader fed whole and a byte at a time, the close a
handler may ask for, and websocketd's JSON form of a line."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsexec.backends import API_CLOSED, CLIENT_CLOSED, CLIENT_GONE, FAR_END_DONE, PROTOCOL_ERROR, SERVER_STOPPING, Ending
from wsexec.backends.process import process_outcome, told_close
from wsexec.proc.closing import parse_close, stderr_close
from wsexec.proc.framing import (BINARY, CLOSE, TEXT, FrameError, FrameReader, FrameTooBig, close_record, frame,
                                  frames)
from wsexec.proc.passstderr import json_string, stream_message


def feed_all(reader: FrameReader, data: bytes, step: int) -> list:
    records = []
    for i in range(0, len(data), step or len(data) or 1):
        records += reader.feed(data[i:i + (step or len(data))])
    return records


@pytest.mark.parametrize("step", [0, 1, 2, 7])
@pytest.mark.parametrize("data, records", [
    (b"t 5\nhello\n", [(TEXT, b"hello")]),
    (b"b 0\n\n", [(BINARY, b"")]),
    (b"t 0\n\n", [(TEXT, b"")]),
    (b"t 3\na\nb\n", [(TEXT, b"a\nb")]),  # a newline inside: the length decides
    (b"b 4\n\x00\n\xff\n\n", [(BINARY, b"\x00\n\xff\n")]),
    (b"t 2\nhi\nb 1\n\x01\nc 8\n4001 bye\n", [(TEXT, b"hi"), (BINARY, b"\x01"), (CLOSE, b"4001 bye")]),
    ("t 4\n\u00e9\u00e9\n".encode(), [(TEXT, "\u00e9\u00e9".encode())]),  # LENGTH counts bytes
    (b"t 0012\n" + b"x" * 12 + b"\n", [(TEXT, b"x" * 12)]),
    (b"", []),
])
def test_reader_gives_whole_records(data, records, step):
    reader = FrameReader(1 << 20)
    assert feed_all(reader, data, step) == records
    reader.finish()


@pytest.mark.parametrize("data, error", [
    (b"T 5\nhello\n", "not a record header"),  # types are lower case
    (b"t  5\nhello\n", "not a record header"),
    (b"t 5 \nhello\n", "not a record header"),
    (b"t -1\n", "not a record header"),
    (b"t 5\r\nhello\n", "not a record header"),  # no CR
    (b"x 5\nhello\n", "not a record header"),
    (b"hello world, no header at all\n", "not a record header"),
    (b"t 12345678901\n", "not a record header"),  # 11 digits
    (b"t 5\nhello!", "not followed by a newline"),  # LENGTH too short
    (b"t 2\n\xc3\x28\n", "not UTF-8"),
    (b"t 11\n" + b"x" * 11 + b"\n", "exceeds 10 bytes"),
])
@pytest.mark.parametrize("step", [0, 1])
def test_reader_refuses(data, error, step):
    reader = FrameReader(10)
    with pytest.raises(FrameError, match=error):
        feed_all(reader, data, step)
        reader.finish()


def test_records_before_a_fault_come_out_first():
    reader = FrameReader(100)
    assert reader.feed(b"t 2\nhi\nb 1\n\x01\nnonsense\n") == [(TEXT, b"hi"), (BINARY, b"\x01")]
    with pytest.raises(FrameError, match="not a record header"):
        reader.feed(b"t 2\nok\n")
    with pytest.raises(FrameError, match="not a record header"):
        reader.finish()


def test_a_record_over_the_limit_fails_at_its_header_before_its_payload():
    reader = FrameReader(100)
    with pytest.raises(FrameTooBig):
        reader.feed(b"b 101\n")


def test_a_header_never_grows_past_its_bound():
    reader = FrameReader(100)
    reader.feed(b"t 1234")  # could still become a header
    with pytest.raises(FrameError):
        reader.feed(b"x" * 20)


@pytest.mark.parametrize("data", [b"t 5\nhel", b"t 5", b"t 5\nhello"])
def test_output_that_ends_inside_a_record_is_an_error(data):
    reader = FrameReader(100)
    assert reader.feed(data) == []
    with pytest.raises(FrameError, match="inside a record"):
        reader.finish()


def test_records_round_trip_a_byte_at_a_time():
    messages = [(TEXT, b""), (BINARY, b""), (TEXT, "caf\u00e9\n\n".encode()), (BINARY, bytes(range(256)) * 3)]
    data = frames(messages)
    assert data.startswith(b"t 0\n\nb 0\n\nt 7\ncaf\xc3\xa9\n\n\nb 768\n")
    assert frame(TEXT, b"hello") == b"t 5\nhello\n"
    reader = FrameReader(1 << 20)
    assert feed_all(reader, data, 1) == messages
    assert frames(messages[2:3]) == frame(*messages[2])


def test_a_big_record_in_reads_of_any_size_is_one_copy_of_its_payload():
    payload = os.urandom(3 << 20)
    reader = FrameReader(4 << 20)
    assert feed_all(reader, frame(BINARY, payload), 65536) == [(BINARY, payload)]
    assert len(reader.buffer) == 0


# --- the close a handler asks for -------------------------------------------------------

@pytest.mark.parametrize("text, close", [
    (b"4000", (4000, "")),
    (b"4001 no such room", (4001, "no such room")),
    (b"4999 a  b ", (4999, "a  b ")),
    (b"4002 " + "\u00e9".encode() * 70, (4002, "\u00e9" * 61)),  # 123 bytes at most, whole characters
    (b"4003 \xff", (4003, "\ufffd")),
])
def test_a_close_in_the_applications_range_is_taken(text, close):
    assert parse_close(text) == (close, "")


@pytest.mark.parametrize("text", [b"1000 bye", b"3000", b"3999", b"5000", b"1011", b"", b"bye", b"40000",
                                  b"04000", b" 4000", b"4000x", b"+400"])
def test_any_other_close_is_refused_with_the_reason(text):
    close, problem = parse_close(text)
    assert close is None and problem.startswith("a close code must be 4000-4999")


@pytest.mark.parametrize("line, asked", [
    (b"wsexec-close 4001 bye", ((4001, "bye"), "")),
    (b"wsexec-close 1000", (None, "a close code must be 4000-4999, not 1000")),
    (b"wsexec-close", None),  # the prefix is "wsexec-close " with its space
    (b" wsexec-close 4001", None),  # only at the start of a line
    (b"error: wsexec-close 4001", None),
    (b"WSEXEC-CLOSE 4001", None),
    (b"hello", None),
])
def test_a_stderr_line_asks_for_a_close_only_in_its_exact_form(line, asked):
    assert stderr_close(line) == asked


EXITED_0, EXITED_3, KILLED = 0, 3 << 8, 9


@pytest.mark.parametrize("status, kwargs, outcome", [
    (EXITED_0, {"asked": (4001, "bye")}, (4001, "bye")),
    (EXITED_3, {"asked": (4001, "bye")}, (4001, "bye")),  # asked wins over the exit status
    (KILLED, {"asked": (4001, "bye")}, (4001, "bye")),
    (EXITED_0, {"asked": None}, (1000, "")),
    (EXITED_3, {}, (1011, "exit status 3")),
    (EXITED_0, {"asked": (4001, "bye"), "too_long": "too long"}, (1009, "too long")),
    (EXITED_0, {"asked": (4001, "bye"), "bad_output": "bad framed output: x"}, (1011, "bad framed output: x")),
    (EXITED_0, {"bad_output": "bad framed output: x"}, (1011, "bad framed output: x")),
])
def test_how_a_handler_ends_becomes_the_close(status, kwargs, outcome):
    result = process_outcome(status, **kwargs)
    assert (result.code, result.reason) == outcome


# --- --passstderr: websocketd's JSON, byte for byte ---------------------------------------

@pytest.mark.parametrize("data, encoded", [
    (b"plain line", b'"plain line"'),
    (b"", b'""'),
    (b'a "quote" and \\', b'"a \\"quote\\" and \\\\"'),
    (b"tab\there\r", b'"tab\\there\\r"'),
    (b"\x00\x01\x1f\x7f", b'"\\u0000\\u0001\\u001f\x7f"'),  # DEL is left as it is
    (b"\x08\x0c", b'"\\b\\f"'),
    (b"<b> & </b>", b'"\\u003cb\\u003e \\u0026 \\u003c/b\\u003e"'),  # Go's HTML-safe escapes
    ("caf\u00e9 \u2603 \U0001f600".encode(), '"caf\u00e9 \u2603 \U0001f600"'.encode()),  # UTF-8 as it is
    ("a\u2028b\u2029c".encode(), b'"a\\u2028b\\u2029c"'),
    (b"bad \xff byte", b'"bad \\ufffd byte"'),
    (b"\xe2\x82x", b'"\\ufffd\\ufffdx"'),  # one U+FFFD per invalid byte, as Go
    (b"\xed\xa0\x80", b'"\\ufffd\\ufffd\\ufffd"'),  # an encoded surrogate is invalid
    (b"\xc0\x80", b'"\\ufffd\\ufffd"'),  # so is an overlong form
    ("\ufffd".encode(), '"\ufffd"'.encode()),  # a real U+FFFD stays as it is
])
def test_json_string_is_what_websocketd_sends(data, encoded):
    assert json_string(data) == encoded
    json.loads(encoded)  # and it is JSON


def test_stream_message_keys_in_websocketd_order():
    assert stream_message("stdout", b"hi") == b'{"stream":"stdout","data":"hi"}'
    assert stream_message("stderr", b"<x>") == b'{"stream":"stderr","data":"\\u003cx\\u003e"}'
    assert json.loads(stream_message("stderr", b"\xff")) == {"stream": "stderr", "data": "\ufffd"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([TEXT, BINARY]), st.binary(max_size=300)), max_size=8),
       st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20))
def test_any_messages_in_any_pieces_come_back_whole(messages, cuts):
    messages = [(kind, payload.decode("utf-8", "replace").encode() if kind == TEXT else payload)
                for kind, payload in messages]
    data = frames(messages) if messages else b""
    reader, records, pos, i = FrameReader(1 << 16), [], 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        records += reader.feed(data[pos:pos + step])
        pos, i = pos + step, i + 1
    reader.finish()
    assert records == messages


@pytest.mark.parametrize("ending, told", [
    (Ending(CLIENT_CLOSED, 1000, ""), (1000, "")),
    (Ending(CLIENT_CLOSED, 3001, "see you"), (3001, "see you")),
    (Ending(CLIENT_CLOSED, 1005, ""), (1005, "")),  # its close frame had no code
    (Ending(CLIENT_GONE, 1006, "client gone"), (1006, "client gone")),
    (Ending(PROTOCOL_ERROR, 1009, "message too big"), (1009, "message too big")),  # what wsexec sent
    (Ending(API_CLOSED, 4000, "kicked"), (4000, "kicked")),
    (Ending(SERVER_STOPPING), (1001, "server shutting down")),
    (Ending(FAR_END_DONE), None),  # the handler ended it: nothing to tell
])
def test_the_close_a_framed_handler_is_told(ending, told):
    assert told_close(ending) == told


@pytest.mark.parametrize("code, reason, record", [
    (1000, "", b"c 4\n1000\n"),
    (1001, "server shutting down", b"c 25\n1001 server shutting down\n"),
    (3001, "\u2603", b"c 8\n3001 \xe2\x98\x83\n"),  # LENGTH counts bytes
])
def test_close_record(code, reason, record):
    assert close_record(code, reason) == record
    assert FrameReader(1 << 20).feed(record) == [(CLOSE, record.split(b"\n")[1])]  # the reader takes it back
