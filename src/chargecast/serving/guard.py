"""HTTP-layer limits: what one connection may cost a worker, and for how long.

uvicorn's httptools parser has no limit on the size or count of headers and no deadline
for a request head, a body or a client that stops reading: one connection sent 362 MiB of
header lines and got a worker OOM-killed, silent or half-sent heads stayed open for
minutes, and a client that never read its answer held it in memory for ever.
:class:`GuardedHttpProtocol` adds, per connection (limits in :class:`HttpLimits`):

- a request head of at most ``head_max_bytes`` and ``head_max_count`` headers, else 431,
  counted as the bytes arrive, before the parser buffers them;
- a head that arrives within ``head_timeout`` s (from the connection, or from the end of the
  previous answer), else 408, or a silent close when nothing came;
- a body that keeps ``body_min_rate`` bytes/s on average since its head, after
  ``body_grace`` s of grace (Apache mod_reqtimeout's rule: the allowance grows with what
  arrived, so dripping a byte now and then does not reset it), else 408; time the server
  itself stopped reading (flow control) is not held against the client;
- a send deadline: a client that takes none of the bytes waiting for it for
  ``send_timeout`` s is reset, which frees what its answer held;
- at most ``max_connections`` open connections per worker (the newest is reset), and a
  fixed kernel send buffer, so what one connection holds in the kernel is bounded too;
- an answer given before the request body has all arrived (413, 503, 408) is followed by a
  lingering close, as nginx and Apache do: the server sends its FIN and reads and drops the
  rest of the body for up to ``LINGER_SECONDS``, because closing with unread bytes makes the
  kernel reset the connection and the client loses the answer;
- on close, the socket is kept (a duplicate) until the client has the bytes in flight, so
  SIGTERM can wait for a slow download to finish (:class:`GuardedServer`); a duplicate
  whose client takes nothing for ``send_timeout`` s is reset.

Deadlines are checked by :class:`GuardedServer` twice a second over all connections, not
per request: the hot path pays a few attribute updates. The app learns that its body is
too slow through the scope key :data:`SLOW_BODY` and answers the 408 itself (its error
shape, its logs); when it is not reading, the protocol answers instead.

A head that starts in the same socket read as the end of a previous (pipelined) request is
counted from the next read on, so a pipelining client can hold up to one read (256 KiB)
more; browsers and HTTP libraries do not pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import socket
import struct
import termios
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from uvicorn import Server

try:  # whichever HTTP implementation uvicorn's "auto" would pick
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpProtocol
except ImportError:  # pragma: no cover - httptools is in the lock file
    from uvicorn.protocols.http.h11_impl import H11Protocol as _HttpProtocol  # type: ignore[assignment]

log = logging.getLogger("chargecast.serving.guard")

SLOW_BODY: Final = "chargecast.slow_body"  # scope key: the body broke its rate; value is the message
CHECK_EVERY: Final = 5  # uvicorn ticks (0.1 s each) between two deadline sweeps
DRAIN_POLL: Final = 0.05
LINGER_SECONDS: Final = 10.0  # how long the rest of a refused body is read and dropped
_END_OF_HEAD = re.compile(rb"\n\r?\n")
_feed: Final = _HttpProtocol.data_received
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and drops the queue


class _Clock:
    """A monotonic time read per request at the cost of an attribute: deadlines are swept every
    half second, so the tick's own clock (refreshed every 0.1 s by GuardedServer) is precise enough."""

    now: float = time.monotonic()


CLOCK: Final = _Clock()


@dataclass(frozen=True)
class HttpLimits:
    """The per-connection limits; ``chargecast serve`` exports them as ``CHARGECAST_*``."""

    head_max_bytes: int
    head_max_count: int
    head_timeout: float
    body_min_rate: int
    body_grace: float
    send_timeout: float
    max_connections: int
    send_buffer: int

    ENV: ClassVar[Mapping[str, str]] = {
        "head_max_bytes": "CHARGECAST_HEAD_MAX_BYTES",
        "head_max_count": "CHARGECAST_HEAD_MAX_COUNT",
        "head_timeout": "CHARGECAST_HEAD_TIMEOUT",
        "body_min_rate": "CHARGECAST_BODY_MIN_RATE",
        "body_grace": "CHARGECAST_BODY_GRACE",
        "send_timeout": "CHARGECAST_SEND_TIMEOUT",
        "max_connections": "CHARGECAST_MAX_CONNECTIONS",
        "send_buffer": "CHARGECAST_SEND_BUFFER",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> HttpLimits:
        """Read the values ``chargecast serve`` validated and exported (workers have no pydantic)."""
        values: dict[str, Any] = {}
        for name, var in cls.ENV.items():
            kind = cls.__dataclass_fields__[name].type
            values[name] = float(environ[var]) if kind == "float" else int(environ[var])
        return cls(**values)


TCP_CLOSE: Final = 7  # tcpi_state after a reset (include/net/tcp_states.h)


def send_queue(fd: int) -> int:
    """Bytes written to a connected socket that the peer has not acknowledged yet (0 when it is gone).

    SIOCOUTQ is write_seq - snd_una, which a reset leaves as it was: a socket the client reset
    would seem to wait for ever, so a closed TCP state counts as nothing left to send.
    """
    try:
        out = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ on a socket
        sock = socket.socket(fileno=fd)
        try:
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        finally:
            sock.detach()
    except OSError:
        return 0
    return 0 if state == TCP_CLOSE else int(struct.unpack("i", out)[0])


def _reset_and_close(fd: int) -> None:
    """Close a socket with RST: what the client never took is dropped, not kept by the kernel."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=fd)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        finally:
            sock.close()


@dataclass
class _Lingering:
    """A closed connection's duplicate socket, kept while its client takes the last bytes."""

    fd: int
    queued: int
    since: float  # when ``queued`` last went down


# Duplicates of closed connections' sockets whose send queue was not yet empty (per worker).
LINGERING: list[_Lingering] = []


def release_taken(now: float, send_timeout: float) -> None:
    """Close the duplicates whose bytes were taken; reset those whose client took nothing for too long."""
    for entry in list(LINGERING):
        queued = send_queue(entry.fd)
        if queued == 0:
            LINGERING.remove(entry)
            os.close(entry.fd)
        elif queued < entry.queued:
            entry.queued, entry.since = queued, now
        elif now - entry.since > send_timeout:
            LINGERING.remove(entry)
            log.warning("reset a closed connection whose client took nothing", extra={"fields": {"bytes": queued}})
            _reset_and_close(entry.fd)


class _LingeringTransport:
    """The transport as uvicorn sees it, except that ``close`` turns into a lingering close
    while the request body is still arriving (see :meth:`GuardedHttpProtocol.linger`)."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpProtocol) -> None:
        self.transport = transport
        self.protocol = protocol
        # Bound once: uvicorn calls these per response, so no per-call indirection.
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading
        self.get_write_buffer_size = transport.get_write_buffer_size
        self.set_protocol = transport.set_protocol
        self.abort = transport.abort

    def close(self) -> None:
        if not self.protocol.linger():
            self.transport.close()


class GuardedHttpProtocol(_HttpProtocol):
    """uvicorn's HTTP protocol with the limits of :class:`HttpLimits` (see the module doc)."""

    limits: ClassVar[HttpLimits | None] = None  # None: read from the environment on first use

    @classmethod
    def _limits(cls) -> HttpLimits:
        if cls.limits is None:
            cls.limits = HttpLimits.from_env()
        return cls.limits

    # -- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._lingering: float | None = None  # since when the rest of a refused body is dropped
        self._dropping = False  # refused or lingering: what arrives is dropped unread
        self._body_since: float | None = None
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        self.guard = self._limits()
        # A read that starts with a request line and has its blank line within the limit holds a
        # whole head (CR/LF before a request line, which the parser skips, take the long way).
        self._head_window = self.guard.head_max_bytes
        now = time.monotonic()
        self._aborted = False
        self._refusal: tuple[int, str] | None = None
        self._head_reset(now)
        self._body_bytes = 0
        self._answered: object = None  # the last cycle whose complete answer a sweep saw
        self._body_flagged = 0.0
        self._last_check = now
        self._stuck_size, self._stuck_since = 0, now
        # Closed connections still handing their last bytes to a client hold a socket too.
        if len(self.connections) + len(LINGERING) > self.guard.max_connections:
            log.warning("refused a connection", extra={"fields": {"open": len(self.connections)}})
            self._abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.guard.send_buffer)

    def _head_reset(self, now: float) -> None:
        self._in_head = True
        self._head_since = now
        self._head_bytes = 0
        self._head_begun = False  # a byte other than CR or LF has arrived
        self._carry = b""
        self._body_since = None

    def linger(self) -> bool:
        """Start a lingering close if an answer went out before its request body had arrived.

        Returns False when the connection should simply close (no body pending, already
        lingering, or an abort).
        """
        cycle = self.cycle
        if self._lingering is not None or self._aborted or self._body_since is None:
            return False  # no body is on its way (on_message_complete clears _body_since)
        if cycle is None or not cycle.response_complete:
            return False
        self._lingering = time.monotonic()
        self._dropping = True
        with contextlib.suppress(OSError, RuntimeError, AttributeError):
            self.transport.transport.write_eof()  # type: ignore[attr-defined]  # FIN after the answer
        return True

    def shutdown(self) -> None:
        if self._lingering is not None:  # stopping: drop the rest of the body now
            self.transport.transport.close()  # type: ignore[attr-defined]
            return
        super().shutdown()

    def _abort(self) -> None:
        """Reset the connection: the kernel drops what the client did not take (a plain abort
        would still send it, holding the socket's buffer until the client reads or times out)."""
        self._aborted = True
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None and not self._aborted else None
        if sock is not None:  # asyncio closes the socket only after this method returns
            with contextlib.suppress(OSError):
                queued = send_queue(sock.fileno())
                if queued > 0:
                    LINGERING.append(_Lingering(os.dup(sock.fileno()), queued, time.monotonic()))
        super().connection_lost(exc)

    # -- the request head ----------------------------------------------------------------
    # data_received, on_header and on_message_complete are the only parser hooks: the others
    # run for every request too, and what they would record is read off uvicorn's cycle.
    def data_received(self, data: bytes) -> None:
        if self._dropping:  # refused or lingering: the rest is dropped unread
            return
        before = self.cycle
        if not self._in_head:
            head = 0
            self._body_bytes += len(data)  # counted here rather than per parser callback
        elif not self._head_begun and data[0] > 32 and (end := data.find(b"\r\n\r\n", 0, self._head_window)) > 0:
            head = self._head_bytes = end + 4  # the usual: a whole head in one read, within the limit
            self._head_begun = True
        else:
            head = self._head_part(data)
            if head < 0:
                self._refuse(431, f"request head is larger than {self.guard.head_max_bytes} bytes")
                return
        _feed(self, data)  # uvicorn's data_received: feeds the parser, answers 400 to garbage
        started = self.cycle
        if started is not before and started is not None and started.more_body and not self._dropping:
            # A head completed in this read and its body is still on its way.
            self._in_head, self._body_since, self._body_flagged = False, CLOCK.now, 0.0
            self._body_bytes = len(data) - head

    def on_message_complete(self) -> None:
        # The request is whole (or answered already): what comes next is a new head. Reset here,
        # before uvicorn's own callback, which returns early once the answer is complete.
        self._in_head, self._head_bytes, self._head_begun, self._carry = True, 0, False, b""
        self._body_since = None
        super().on_message_complete()

    def _head_part(self, data: bytes) -> int:
        """How many bytes of ``data`` belong to the request head (up to its blank line), or -1
        once the head is over the limit."""
        limit = self.guard.head_max_bytes
        view, skipped = data, 0
        if not self._head_begun:  # the parser skips CR/LF before a request line: count, don't scan
            view = data.lstrip(b"\r\n")
            skipped = len(data) - len(view)
            self._head_bytes += skipped
            if not view:
                return skipped if self._head_bytes <= limit else -1
            self._head_begun = True
        window = self._carry + view[: limit + 4]
        end_match = _END_OF_HEAD.search(window)
        if end_match is None:
            used = len(view)
            self._carry = window[-3:]
        else:
            used = max(0, end_match.end() - len(self._carry))
        self._head_bytes += used
        return skipped + used if self._head_bytes <= limit else -1

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.guard.head_max_count:  # uvicorn starts a new list per request
            self._refusal = (431, f"request has more than {self.guard.head_max_count} headers")
            raise _RefusedError  # httptools turns it into a parser error; send_400_response answers ours
        name = name.lower()  # uvicorn's on_header, inlined: it runs for every header of every request
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._refuse(*self._refusal)
            return
        super().send_400_response(msg)

    def _refuse(self, status: int, message: str) -> None:
        """Answer a short error the app never saw, and close."""
        if self.transport.is_closing():
            return
        text = message.encode()
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}.get(status, b"Error")
        head = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        headers = b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        self.transport.write(head + headers % len(text) + text)
        self.transport.close()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.parser = None  # type: ignore[assignment]
        self._dropping = True

    # -- deadlines, checked by GuardedServer ---------------------------------------------
    def check_deadlines(self, now: float) -> None:
        """Enforce the send, head and body deadlines (called about twice a second)."""
        if self._aborted or self.transport is None:
            return
        limits = self.guard
        waiting = self.transport.get_write_buffer_size()
        if waiting and waiting == self._stuck_size:
            if now - self._stuck_since > limits.send_timeout:
                log.warning("reset a client that stopped reading", extra={"fields": {"bytes": waiting}})
                self._abort()
                return
        else:
            self._stuck_size, self._stuck_since = waiting, now
        elapsed, self._last_check = now - self._last_check, now
        if self.transport.is_closing():
            return
        if self._lingering is not None:
            if now - self._lingering > LINGER_SECONDS:
                self.transport.transport.close()  # type: ignore[attr-defined]
            return
        cycle = self.cycle
        if self._in_head and (cycle is None or cycle.response_complete):
            if cycle is not None and cycle is not self._answered:
                # The next head's deadline runs from the end of the previous answer, seen here
                # (up to one sweep late, in the client's favour) rather than hooked per request.
                self._answered, self._head_since = cycle, now
            elif now - self._head_since > limits.head_timeout:
                if self._head_bytes:
                    self._refuse(408, f"the request head did not arrive within {limits.head_timeout:g} s")
                else:
                    self.transport.close()  # silent: nothing to answer
            return
        if self._body_since is None or cycle is None:
            return
        if self.flow.read_paused:  # our own doing (the app is not reading yet): not the client's
            self._body_since += elapsed
            return
        if now <= self._body_since + limits.body_grace + self._body_bytes / limits.body_min_rate:
            return
        if cycle.response_complete:  # answered already (401, 404, 415...): the rest is not worth waiting for
            self.transport.transport.close()  # type: ignore[attr-defined]
            return
        if not self._body_flagged:
            message = (
                f"the body arrived slower than {limits.body_min_rate:,} bytes/s "
                f"(after {limits.body_grace:g} s of grace)"
            )
            self.scope[SLOW_BODY] = message  # type: ignore[typeddict-unknown-key]
            self._body_flagged = now
            cycle.message_event.set()  # wake the app's receive(): it answers 408 itself
        elif now - self._body_flagged > 1.0:
            if not cycle.response_started:
                self._refuse(408, str(self.scope.get(SLOW_BODY)))  # the app is not reading: answer for it
            else:
                self.transport.transport.close()  # type: ignore[attr-defined]


class _RefusedError(Exception):
    """Raised inside a parser callback to stop parsing a request that broke a limit."""


class GuardedServer(Server):
    """uvicorn's server with the connection deadlines swept, and a shutdown that waits for
    the kernel to hand the last bytes to slow clients (a container's network goes with it)."""

    @property
    def limits(self) -> HttpLimits | None:
        protocol = getattr(self.config, "http_protocol_class", None)
        if isinstance(protocol, type) and issubclass(protocol, GuardedHttpProtocol):
            return protocol.limits  # set once the first connection was made
        return None

    async def on_tick(self, counter: int) -> bool:
        CLOCK.now = now = time.monotonic()
        limits = self.limits
        if limits is not None:
            if LINGERING:
                release_taken(now, limits.send_timeout)
            if counter % CHECK_EVERY == 0:
                for connection in list(self.server_state.connections):
                    if isinstance(connection, GuardedHttpProtocol):
                        connection.check_deadlines(now)
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or 0)
        await super().shutdown(sockets)  # every connection is closed (and lingering) after this
        limits = self.limits
        patience = limits.send_timeout if limits is not None else float("inf")
        release_taken(time.monotonic(), patience)
        if not LINGERING:
            return
        start, pending = time.monotonic(), sum(send_queue(e.fd) for e in LINGERING)
        while LINGERING and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL)
            release_taken(time.monotonic(), patience)
        if LINGERING:
            log.warning(
                "exiting with bytes not yet taken by clients",
                extra={"fields": {"connections": len(LINGERING), "bytes": sum(send_queue(e.fd) for e in LINGERING)}},
            )
        else:
            log.info(
                "clients took the last bytes",
                extra={"fields": {"bytes": pending, "seconds": round(time.monotonic() - start, 3)}},
            )
