"""Length-prefixed frames: a small orjson header and an opaque body, nothing else.

A frame is ``>II`` (header length, body length), then the header (an orjson object), then the
body (bytes the receiver validates: JSON arguments, or a JSON result). Nothing is ever
unpickled; a frame that breaks these rules is a protocol error and its sender is killed.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import orjson

PREFIX = struct.Struct(">II")
MAX_HEADER_BYTES = 256 * 1024  # error messages and tracebacks are cut well below this


class FrameError(Exception):
    """A peer sent something that is not a valid frame."""


def encode_frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return PREFIX.pack(len(head), len(body)) + head + body


def parse_header(data: bytes) -> dict[str, Any]:
    try:
        header = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise FrameError("frame header is not an object with an 'op'")
    return header


def decode_message(data: bytes) -> dict[str, Any]:
    """The header of one whole frame received as a message (the SOCK_SEQPACKET control socket)."""
    if len(data) < PREFIX.size:
        raise FrameError("message shorter than a frame prefix")
    head_len, _ = PREFIX.unpack_from(data)
    if head_len > MAX_HEADER_BYTES or len(data) < PREFIX.size + head_len:
        raise FrameError("message does not hold the frame it announces")
    return parse_header(data[PREFIX.size : PREFIX.size + head_len])


class FrameReader:
    """Incremental decoder for a byte stream (the node's side of a worker socket)."""

    __slots__ = ("_buf", "max_body")

    def __init__(self, max_body: int) -> None:
        self._buf = bytearray()
        self.max_body = max_body

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        """Add bytes; return every complete frame. Raises ``FrameError`` on a bad one."""
        buf = self._buf
        buf += data
        frames = []
        while len(buf) >= PREFIX.size:
            head_len, body_len = PREFIX.unpack_from(buf)
            if head_len > MAX_HEADER_BYTES or body_len > self.max_body:
                raise FrameError(f"frame too large (header {head_len} B, body {body_len} B)")
            end = PREFIX.size + head_len + body_len
            if len(buf) < end:
                break
            header = parse_header(bytes(buf[PREFIX.size : PREFIX.size + head_len]))
            frames.append((header, bytes(buf[PREFIX.size + head_len : end])))
            del buf[:end]
        return frames


def recv_frame(sock: socket.socket, max_body: int) -> tuple[dict[str, Any], bytes] | None:
    """Blocking read of one frame (the worker's side); None at end of stream."""
    prefix = _recv_exactly(sock, PREFIX.size)
    if prefix is None:
        return None
    head_len, body_len = PREFIX.unpack(prefix)
    if head_len > MAX_HEADER_BYTES or body_len > max_body:
        raise FrameError(f"frame too large (header {head_len} B, body {body_len} B)")
    rest = _recv_exactly(sock, head_len + body_len)
    if rest is None:
        raise FrameError("stream ended inside a frame")
    return parse_header(rest[:head_len]), rest[head_len:]


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    if n == 0:
        return b""
    chunks = []
    remaining = n
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            if remaining == n:
                return None
            raise FrameError("stream ended inside a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
