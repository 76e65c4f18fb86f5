"""The live streams' write path below `Request.write` (`web.stream._send`): a real TCP
connection (a socket pair under Twisted's own `tcp.Server`), a reactor that records who asks to
be told about writability."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol

from web.live import HEARTBEAT, chunk
from web.stream import _send


class _Reactor:
    """What `tcp.Server` asks of a reactor here: which descriptors want reading and writing."""

    def __init__(self) -> None:
        self.writers: list[object] = []

    def addReader(self, reader: object) -> None:
        pass

    def removeReader(self, reader: object) -> None:
        pass

    def addWriter(self, writer: object) -> None:
        if writer not in self.writers:
            self.writers.append(writer)

    def removeWriter(self, writer: object) -> None:
        if writer in self.writers:
            self.writers.remove(writer)


@pytest.fixture
def pair() -> Iterator[tuple[tcp.Server, socket.socket, _Reactor]]:
    server, client = socket.socketpair()
    server.setblocking(False)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    reactor = _Reactor()
    transport = tcp.Server(server, Protocol(), ("127.0.0.1", 1), None, 1, reactor)  # type: ignore[arg-type]
    try:
        yield transport, client, reactor
    finally:
        server.close()
        client.close()


def _read(client: socket.socket, size: int) -> bytes:
    client.settimeout(5)
    got = b""
    while len(got) < size:
        got += client.recv(size - len(got))
    return got


def test_a_chunk_is_its_hex_size_the_data_and_crlf() -> None:
    assert chunk(b"abc") == b"3\r\nabc\r\n"
    assert chunk(HEARTBEAT) == b"4\r\n: \n\n\r\n"
    assert chunk(b"x" * 300).startswith(b"12c\r\n")
    with pytest.raises(ValueError):
        chunk(b"")  # the last chunk: it would end the response


def test_a_frame_the_socket_takes_goes_straight_to_it(
    pair: tuple[tcp.Server, socket.socket, _Reactor],
) -> None:
    transport, client, reactor = pair
    _send(transport, b"one")
    _send(transport, b"two")
    assert reactor.writers == []  # never registered for writing
    assert transport._tempDataLen == 0
    assert _read(client, 6) == b"onetwo"


def test_what_the_socket_does_not_take_is_buffered_and_keeps_its_order(
    pair: tuple[tcp.Server, socket.socket, _Reactor],
) -> None:
    transport, client, reactor = pair
    big = bytes(range(256)) * 4096  # 1 MiB: more than both socket buffers
    _send(transport, big)
    assert reactor.writers == [transport]  # the rest waits for writability, as any write
    held = transport._tempDataLen
    assert 0 < held < len(big)
    _send(transport, b"after")  # something is buffered: this goes behind it, not to the socket
    assert transport._tempDataLen == held + 5
    expected = big + b"after"
    got = b""
    client.settimeout(5)
    while len(got) < len(expected):
        got += client.recv(65536)  # what the socket holds now
        if transport in reactor.writers:
            transport.doWrite()
    assert got == expected
    assert reactor.writers == []


def test_a_paused_or_closing_transport_gets_the_ordinary_write(
    pair: tuple[tcp.Server, socket.socket, _Reactor],
) -> None:
    transport, client, reactor = pair
    transport.producerPaused = True
    _send(transport, b"held")
    assert transport._tempDataLen == 4 and reactor.writers == [transport]
    transport.producerPaused = False
    transport.doWrite()
    assert _read(client, 4) == b"held"
    transport.disconnecting = True
    _send(transport, b"late")
    assert transport._tempDataLen == 4  # left to the transport, which closes after it


def test_a_broken_connection_leaves_the_frame_to_the_transport(
    pair: tuple[tcp.Server, socket.socket, _Reactor],
) -> None:
    transport, client, reactor = pair
    client.close()
    for _ in range(3):  # the first send may still succeed; then EPIPE / ECONNRESET
        _send(transport, b"x" * 1000)
    assert reactor.writers == [transport]  # its doWrite meets the error and closes
    assert transport.doWrite() is not None
