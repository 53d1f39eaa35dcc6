"""The pool's wire format: frames in, frames out, and refusal of anything else (no pickle)."""

from __future__ import annotations

import socket
import struct

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncjobs.pool.frames import (
    MAX_HEADER_BYTES,
    FrameError,
    FrameReader,
    decode_message,
    encode_frame,
    recv_frame,
)

headers = st.dictionaries(
    st.text(max_size=10),
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.none()),
    max_size=5,
).map(lambda d: {**d, "op": "run"})


@given(frames=st.lists(st.tuples(headers, st.binary(max_size=300)), max_size=8),
       cut=st.integers(min_value=1, max_value=64))  # fmt: skip
def test_frames_survive_any_split_of_the_stream(
    frames: list[tuple[dict[str, object], bytes]], cut: int
) -> None:
    stream = b"".join(encode_frame(h, b) for h, b in frames)
    reader = FrameReader(max_body=1000)
    got = []
    for start in range(0, len(stream), cut):
        got.extend(reader.feed(stream[start : start + cut]))
    assert got == frames


def test_a_frame_larger_than_the_limit_is_refused_before_it_is_buffered() -> None:
    reader = FrameReader(max_body=10)
    with pytest.raises(FrameError, match="too large"):
        reader.feed(struct.pack(">II", 2, 11))
    with pytest.raises(FrameError, match="too large"):
        FrameReader(max_body=10).feed(struct.pack(">II", MAX_HEADER_BYTES + 1, 0))


@pytest.mark.parametrize(
    "header",
    [b"\x80\x04\x95", b"[1, 2]", b'{"no_op": 1}', b'{"op": 5}'],
    ids=["pickle", "not-an-object", "no-op", "op-not-a-string"],
)
def test_a_header_that_is_not_a_json_object_with_an_op_is_a_protocol_error(header: bytes) -> None:
    with pytest.raises(FrameError):
        FrameReader(max_body=10).feed(struct.pack(">II", len(header), 0) + header)


def test_decode_message_reads_one_whole_frame_and_refuses_a_short_one() -> None:
    assert decode_message(encode_frame({"op": "spawn", "ref": 3})) == {"op": "spawn", "ref": 3}
    with pytest.raises(FrameError):
        decode_message(b"\x00\x00")
    with pytest.raises(FrameError):
        decode_message(struct.pack(">II", 50, 0) + b"{}")


def test_recv_frame_reads_frames_from_a_blocking_socket_and_none_at_the_end() -> None:
    a, b = socket.socketpair()
    with a, b:
        body = orjson.dumps([[1], {}])
        a.sendall(encode_frame({"op": "run", "name": "x"}, body) + encode_frame({"op": "exit"}))
        a.shutdown(socket.SHUT_WR)
        assert recv_frame(b, 100) == ({"op": "run", "name": "x"}, body)
        assert recv_frame(b, 100) == ({"op": "exit"}, b"")
        assert recv_frame(b, 100) is None


def test_recv_frame_refuses_a_stream_cut_inside_a_frame() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(encode_frame({"op": "run"}, b"12345")[:-2])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(FrameError, match="inside a frame"):
            recv_frame(b, 100)
