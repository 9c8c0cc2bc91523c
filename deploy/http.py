"""uvicorn's HTTP protocol (httptools) with the two bounds it lacks: the size of a request's head (request line and
headers) and the time a client may take to send it.

uvicorn bounds idle keep-alive connections and, with flow control, the body buffered per connection; it does not
bound a head that keeps growing (every header is kept) or a client that sends its head a byte at a time, each of
which holds a connection and its memory for as long as the client likes. This protocol answers 431 to a head
larger than `max_header_bytes` and 408 to one not complete within `read_timeout_s` of its first byte (or of the
connection), and closes the connection. uvicorn takes a protocol class as `http=`: this is that extension point,
not a patch. The body's bounds are the application's (deploy/service.py reads it in chunks, with a deadline).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


LINGER_S = 2.0  # after refusing a request, how long to keep reading (and dropping) what the client still sends


def _close_with(transport: asyncio.Transport, status: bytes, reason: bytes) -> None:
    """Answer and close as nginx's lingering close does: half-close, drop what still arrives for LINGER_S, then
    close. Closing with unread data would reset the connection, and the client might never read the answer."""
    body = reason + b"\n"
    transport.write(
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    if transport.can_write_eof():
        transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)
    else:
        transport.close()


def bounded_protocol(max_header_bytes: int, read_timeout_s: float) -> type[HttpToolsProtocol]:
    """An HttpToolsProtocol class that bounds each request head's size and the time to receive it."""

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _in_head: bool
        _head_bytes: int
        _head_timer: asyncio.TimerHandle | None
        _refused: bool

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._in_head, self._head_bytes, self._head_timer, self._refused = True, 0, None, False
            self._arm()

        def _refuse(self, status: bytes, reason: bytes) -> None:
            self._refused = True
            self._disarm()
            _close_with(self.transport, status, reason)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(read_timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self._in_head and self._head_bytes and not self.transport.is_closing():
                log.info("serve: a client did not send its request head within %gs: closed", read_timeout_s)
                self._refuse(b"408 Request Timeout", b"request head not received in time")
            elif self._in_head and not self.transport.is_closing() and self.cycle is None:
                self.transport.close()  # connected and silent: nothing to answer

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # answered already: what still arrives is dropped until the connection closes
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > max_header_bytes and not self.transport.is_closing():
                log.info("serve: a request head over %d bytes: refused", max_header_bytes)
                self._refuse(b"431 Request Header Fields Too Large",
                             f"request line and headers over {max_header_bytes} bytes".encode())  # fmt: skip

        def on_message_begin(self) -> None:
            # the parser saw the first byte of a request (pipelined ones included): its head is being read
            self._in_head, self._head_bytes = True, 1  # begun: a stall from here on is answered 408
            if self._head_timer is None:
                self._arm()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            # (self.cycle is the newest request's: with pipelining it may be one not answered yet)
            if cycle is not None and cycle.response_complete and cycle.more_body and not self.transport.is_closing():
                # answered before its body was read (413, 408): the rest of the body cannot be told from a next
                # request, so end the connection as a refused head is ended (lingering close)
                self._refused = True
                self._disarm()
                if self.transport.can_write_eof():
                    self.transport.write_eof()
                    self.loop.call_later(LINGER_S, self.transport.close)
                else:
                    self.transport.close()
                return
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return BoundedHttpToolsProtocol
