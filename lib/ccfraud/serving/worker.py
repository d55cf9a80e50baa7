"""The Procfile's gunicorn worker: gevent greenlets read the sockets, so slow clients cannot occupy a scoring process.

A ``sync`` worker reads a request on the one thread that also scores it: four
clients sending a byte every 1.5 s held both workers of the Procfile and made
``/ready`` time out for ~25 s. Here each connection is read by its own greenlet,
which waits for bytes without holding the process; scoring stays CPU-bound and
short and runs on the process's main thread as before, so two workers still use
the two cores.

Every request must also arrive complete within ``CCFRAUD_READ_TIMEOUT`` seconds
(default 5): counted from the connection's opening for its first request, and from
the first byte of each later one on a kept-alive connection. Headers that are late
get a 408 JSON error from here; a late body raises :class:`TimeoutError` in the
application's read, which answers 408 (:func:`ccfraud.serving.app._request_body`).
Either way the connection is then closed. A connection on which no request starts
is closed quietly: after that time if it never sent one, after gunicorn's
``--keep-alive`` between two requests.

Whatever else gunicorn refuses before the application runs (a request line or a
header over its limits, a malformed one) is answered in the API's JSON error shape
too, with gunicorn's status: a client never has to parse an HTML page.

Threads stay real threads: the monkey-patching leaves ``threading`` and ``queue``
alone, so a big batch still scores its trees in one thread per CPU (a patched
thread pool would be greenlets taking turns on one core). ``ssl`` is left alone too:
the preloaded app imported it before the fork, and patching it late is unsafe (the
API speaks plain HTTP; TLS ends at the platform's router).
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import socket
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import gevent
from gevent import monkey
from gunicorn import util
from gunicorn.http.errors import ParseException
from gunicorn.workers.ggevent import GeventWorker

from ccfraud.serving import config as serving_config

if TYPE_CHECKING:
    from gunicorn.config import Config
    from gunicorn.glogging import Logger
    from gunicorn.http.message import Request


#: Any positive sleep resumes a greenlet only after the event loop's next poll for I/O; ``sleep(0)`` may not.
NEXT_TURN = 1e-6


class HeadersTimeout(Exception):
    """A request's headers did not arrive in time: answered 408 by the worker, since no application saw it.

    Not an :class:`OSError`: gunicorn would log one as a socket failure, with a traceback, and answer nothing.
    """


class BoundedReads:
    """A connected socket whose reads for one request stop at a deadline; everything else is the socket's own.

    gunicorn's parser reads the headers, and the application the body, through
    ``recv``; each call waits at most until the request's deadline, however the
    client spaces its bytes (a timeout per ``recv`` would let a byte every 1.5 s
    go on for ever). Writes are untouched.
    """

    def __init__(self, sock: socket.socket, read_timeout: float, idle_timeout: float):
        self._sock = sock
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        #: The request whose body is being read (the application has it), or None while headers are read.
        self.request: Request | None = None
        self.received = 0
        self.timed_out = False
        #: The application's request body was found broken after its answer: bytes may be left unread.
        self.body_broken = False
        self.deadline = time.monotonic() + read_timeout  # the first request: from the connection's opening
        self.idle_until = self.deadline

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def serving(self, request: Request) -> None:
        """The headers of ``request`` are in: later reads are its body's, read by the application."""
        self.request = request

    def served(self) -> None:
        """The response is sent: wait at most ``idle_timeout`` for the next request's first byte."""
        self.request = None
        self.received = 0
        self.idle_until = time.monotonic() + self.idle_timeout
        self.deadline = float("inf")  # set when the next request's first byte arrives

    def recv(self, size: int) -> bytes:
        limit = self.deadline if self.received else self.idle_until
        remaining = limit - time.monotonic()
        if remaining > 0:
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(size)
            except TimeoutError:
                pass
            else:
                if data and not self.received:
                    self.deadline = min(self.deadline, time.monotonic() + self.read_timeout)
                self.received += len(data)
                return data
            finally:
                self._sock.settimeout(None)
        if not self.received:
            return b""  # no request begun: the same as a client that closed, so the connection closes quietly
        what = f"{self.read_timeout:g} s ({serving_config.READ_TIMEOUT_ENV})"
        self.timed_out = True
        if self.request is None:
            raise HeadersTimeout(f"the request headers did not arrive within {what}")
        self.request.must_close = True  # its response says "Connection: close"; the body's end is unknown
        raise TimeoutError(f"the request did not arrive within {what}")

    def close_gracefully(self) -> None:
        """Close after a 408 so that the client reads it: half-close, then drain briefly what it still sends.

        Closing a socket with unread bytes in it (the client's next trickled byte) makes
        the kernel reset the connection, and a reset can discard the answer before the
        client has read it (RFC 9112, section 9.6).
        """
        util.close_graceful(self._sock)


def _json_error(status: HTTPStatus, message: str) -> bytes:
    """A whole HTTP response carrying the API's JSON error (see :mod:`ccfraud.serving.errors`), closing."""
    body = json.dumps({"error": {"status": int(status), "message": message}}, separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {int(status)} {status.phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


class BoundedGeventWorker(GeventWorker):
    """gunicorn's gevent worker with the reads of every request bounded in time (module docstring)."""

    read_timeout = serving_config.DEFAULT_READ_TIMEOUT

    @classmethod
    def check_config(cls, cfg: Config, log: Logger) -> None:
        """In the master at start-up: read ``CCFRAUD_READ_TIMEOUT`` (a bad value stops the server) and log it."""
        cls.read_timeout = serving_config.read_timeout()
        log.info("reads bounded: a request must arrive complete within %g s (%s)", cls.read_timeout,
                 serving_config.READ_TIMEOUT_ENV)

    def patch(self) -> None:
        """Make sockets, ``select``, ``time.sleep``, signals cooperative; leave threads, queues and ssl real."""
        monkey.patch_all(thread=False, queue=False, ssl=False)
        self.sockets = [socket.socket(s.FAMILY, socket.SOCK_STREAM, fileno=s.sock.detach()) for s in self.sockets]

    def timeout_ctx(self) -> contextlib.nullcontext[None]:
        """No timer around reading headers: :class:`BoundedReads` bounds both the idle wait and the reading."""
        return contextlib.nullcontext()

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        idle = self.cfg.keepalive or self.read_timeout
        super().handle(listener, BoundedReads(client, self.read_timeout, min(idle, self.read_timeout)), addr)

    def handle_request(self, listener_name: Any, req: Request, sock: BoundedReads, addr: Any) -> None:
        sock.serving(req)
        try:
            super().handle_request(listener_name, req, sock, addr)
            self._drain(req, sock)
            # The connection stays open. If its client has already sent its next request, the
            # read below would return at once and this greenlet would serve request after request
            # while others wait (a p99 of 260-390 ms at 16 clients, against 60-90 ms for sync
            # workers). Wait for the event loop's next turn first: the other connections' ready
            # requests are served in between, round robin.
            gevent.sleep(NEXT_TURN)
        finally:
            if sock.timed_out or sock.body_broken:  # answered, with bytes maybe unread: close without a reset
                sock.close_gracefully()
            sock.served()

    @staticmethod
    def _drain(req: Request, sock: BoundedReads) -> None:
        """Read what the application left of the body (a 404 or a 415 does not read it), within the deadline.

        Left to gunicorn, this would happen while the next request's headers are awaited,
        and a late body would then be answered as late headers. A body that turns out
        malformed here (a broken chunk) closes the connection without a word: its request
        is already answered, and a second response would be read by the client as the
        answer to its next request.
        """
        try:
            while req.body.read(1 << 16):
                pass
        except TimeoutError as exc:
            raise StopIteration from exc  # gunicorn closes the connection
        except ParseException as exc:
            sock.body_broken = True
            raise StopIteration from exc

    def handle_error(self, req: Request | None, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """Answer every error gunicorn itself answers in the API's JSON error shape, not as gunicorn's HTML page.

        Mostly requests refused before the application runs: gunicorn still logs them and
        picks the status (431 for a header over ``--limit-request-field_size``, 414 for a
        request line over ``--limit-request-line``, 400 for a malformed one...) and the
        message; only the body it would send is replaced (:func:`_as_json_error`).
        """
        if isinstance(exc, HeadersTimeout):
            self.log.info("408 to %s: %s", addr[0] if addr else "?", exc)
            answer = _json_error(HTTPStatus.REQUEST_TIMEOUT, str(exc))
        else:
            page = _CapturedWrites(client)
            super().handle_error(req, page, addr, exc)
            answer = _as_json_error(page.sent)
        with contextlib.suppress(OSError):
            client.sendall(answer)
        if isinstance(client, BoundedReads):
            client.close_gracefully()


class _CapturedWrites:
    """A client socket as gunicorn's error page sees it: what gunicorn writes is kept, not sent."""

    def __init__(self, sock: socket.socket | BoundedReads):
        self._sock = sock
        self.sent = b""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)


#: gunicorn's error page (``gunicorn.util.write_error``): its message sits between the heading and ``</body>``.
_PAGE_MESSAGE = re.compile(rb"</h1>\s*(.*?)\s*</body>", re.DOTALL)
#: Longest message echoed: the parser quotes what it refused, up to a header's 8,190 bytes.
MAX_MESSAGE_CHARS = 300


def _as_json_error(page: bytes) -> bytes:
    """gunicorn's error page as the API's JSON error with the same status and gunicorn's own message.

    The message is the one gunicorn chose to show a client (what the parser refused,
    quoted; nothing for a fault of the server's, where it logs the details instead),
    cut to :data:`MAX_MESSAGE_CHARS` so that a refused 8 KB header is not echoed whole.
    A page without a status line (nothing was written) is passed on as it is.
    """
    head, _, body = page.partition(b"\r\n\r\n")
    try:
        status = HTTPStatus(int(head.split(b"\r\n", 1)[0].split()[1]))
    except (IndexError, ValueError):
        return page
    found = _PAGE_MESSAGE.search(body)
    message = html.unescape(found.group(1).decode("latin-1")) if found else ""
    if not message and status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        message = "the server's log has the details"
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 1] + "…"
    return _json_error(status, f"{status.phrase}: {message}" if message else status.phrase)
