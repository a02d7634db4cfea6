"""The HTTP/1.1 connection protocols: uvicorn's with JSON errors and a header deadline.

uvicorn answers a request it cannot parse with a plain-text 400 and leaves a connection that never
sends a complete request head open forever (a slow client can hold every connection). The subclasses
of uvicorn's two HTTP/1.1 protocols here (:class:`JsonHttpToolsProtocol` on the C parser ``httptools``,
the default when it is installed, and :class:`JsonH11Protocol` on the pure-Python ``h11``)

* answers protocol-level errors (malformed request line or headers, bytes that are not ASCII in the
  target, anything the parser raises) with the server's JSON error body, ``field`` ``"request"``;
* gives a client ``HEADER_TIMEOUT_S`` seconds from its first byte (or from connecting) to finish the
  request head, then answers 408 with a JSON body and closes the connection.

Body read deadlines are enforced by the application (:func:`attnkit.server.app.read_body`).

:func:`http_protocol` picks one for the ``http`` setting: ``"httptools"`` parses a request head in C
(about a third of the CPU h11 spends per small request), ``"h11"`` needs no compiled extension, and
``"auto"`` (the default) is httptools when it can be imported, else h11. Both answer the same.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import ConfigError

__all__ = ["JsonH11Protocol", "JsonHttpToolsProtocol", "configure", "error_bytes", "http_protocol", "HTTP_CHOICES", "LOOP_CHOICES", "event_loop"]

#: values of the ``http`` setting
HTTP_CHOICES = ("auto", "httptools", "h11")
#: values of the ``loop`` setting
LOOP_CHOICES = ("auto", "uvloop", "asyncio")

#: seconds a client has to send a complete request head (set from the settings by ``configure``)
HEADER_TIMEOUT_S = 10.0


def configure(header_timeout_s: float) -> None:
    global HEADER_TIMEOUT_S
    HEADER_TIMEOUT_S = float(header_timeout_s)


def error_bytes(code: str, message: str, field: str = "request") -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "field": field}}).encode()


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def http_protocol(name: str = "auto") -> type:
    """The protocol class of the ``http`` setting (``auto``: httptools when installed, else h11);
    :class:`~attnkit.errors.ConfigError` when httptools is asked for and not installed."""
    if name not in HTTP_CHOICES:
        raise ConfigError(f"http: expected one of {', '.join(HTTP_CHOICES)}, got {name!r}")
    if name == "h11" or (name == "auto" and not _installed("httptools")):
        return JsonH11Protocol
    if not _installed("httptools"):
        raise ConfigError("http: 'httptools' is not installed (pip install 'attnkit[server]' or pip install httptools); use 'h11' or 'auto'")
    return JsonHttpToolsProtocol


def event_loop(name: str = "auto") -> str:
    """uvicorn's ``loop`` for the ``loop`` setting (``auto``: uvloop when installed, else asyncio);
    :class:`~attnkit.errors.ConfigError` when uvloop is asked for and not installed."""
    if name not in LOOP_CHOICES:
        raise ConfigError(f"loop: expected one of {', '.join(LOOP_CHOICES)}, got {name!r}")
    if name == "uvloop" and not _installed("uvloop"):
        raise ConfigError("loop: 'uvloop' is not installed (pip install uvloop; Linux and macOS only); use 'asyncio' or 'auto'")
    return name


def _json_response(status: int, body: bytes) -> bytes:
    reason = {400: b"Bad Request", 408: b"Request Timeout"}.get(status, b"Error")
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % (status, reason, len(body)) + body


class _HeadDeadline:
    """The request-head deadline both protocols share: armed when a connection opens or a request ends,
    disarmed when a head is complete; on expiry a JSON 408 and the connection closes."""

    _head_timer: Any = None
    _head_cycle: Any = None
    cycle: Any
    loop: Any
    transport: Any

    def _send_json(self, status: int, code: str, message: str) -> None:
        raise NotImplementedError

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]  # the uvicorn protocol after this mixin
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def send_400_response(self, msg: str) -> None:
        self._send_json(400, "bad_http", f"request: {msg.rstrip('.')} (malformed request line, headers or framing)")

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_cycle = self.cycle
            self._head_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._head_timeout)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.cycle is not self._head_cycle or self.transport is None or self.transport.is_closing():
            return  # a request head arrived meanwhile
        self._send_json(408, "header_timeout", f"request: the request head was not complete within {HEADER_TIMEOUT_S:g} s")


class JsonH11Protocol(_HeadDeadline, H11Protocol):
    """h11 protocol whose own errors are JSON and whose request heads have a deadline."""

    def data_received(self, data: bytes) -> None:
        if self._between_requests():
            self._arm_head_timer()
        super().data_received(data)

    def handle_events(self) -> None:
        try:
            super().handle_events()
        except Exception as exc:  # noqa: BLE001 - e.g. a target that is not ASCII: the client's fault, not a crash
            self.logger.warning("invalid HTTP request: %s: %s", type(exc).__name__, exc)
            if not self.transport.is_closing():
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._head_timer is not None and self.cycle is not self._head_cycle:
            self._disarm_head_timer()  # a new request head was parsed

    # --------------------------------------------------------------- JSON errors
    def _send_json(self, status: int, code: str, message: str) -> None:
        self._disarm_head_timer()
        body = error_bytes(code, message)
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"), (b"content-length", str(len(body)).encode())]
        try:
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers)))
                self.transport.write(self.conn.send(h11.Data(data=body)))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
            else:  # h11 is in an error state: write the answer by hand
                self.transport.write(_json_response(status, body))
        except Exception:  # noqa: BLE001 - the connection is going away either way
            pass
        self.transport.close()


def _httptools_base() -> type:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed: a stand-in that http_protocol never hands out
        return object
    return HttpToolsProtocol


class _OneWrite:
    """The transport as one request's response cycle sees it: the response head is held back and sent
    with the first part of the body in one ``writelines`` (one system call and one TCP segment for a
    small answer instead of two). Everything else goes straight to the transport; a head with no body
    after it (HEAD, an error before the body) is flushed by :meth:`flush` when the response completes,
    and before the connection closes."""

    __slots__ = ("transport", "held")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self.transport.writelines((held, data))
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 1"):  # a final response head, not 100 Continue
            self.held = bytes(data)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class JsonHttpToolsProtocol(_HeadDeadline, _httptools_base()):  # type: ignore[misc]
    """httptools protocol whose own errors are JSON and whose request heads have a deadline (as
    :class:`JsonH11Protocol`; the C parser makes a small request's head about 3x cheaper to read)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._one_writes: list[Any] = []  # response cycles whose transport is a _OneWrite

    def data_received(self, data: bytes) -> None:
        if self._between_requests():
            self._arm_head_timer()
        try:
            super().data_received(data)
        except Exception as exc:  # noqa: BLE001 - the client's bytes, not a crash of the server
            self.logger.warning("invalid HTTP request: %s: %s", type(exc).__name__, exc)
            if not self.transport.is_closing():
                self.send_400_response("Invalid HTTP request received.")

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()  # a request head was parsed
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:
            cycle.transport = _OneWrite(self.transport)
            self._one_writes.append(cycle)

    def on_response_complete(self) -> None:
        # a head without a body (HEAD) goes out now; cycles still answering (pipelined) keep their own
        for cycle in self._one_writes:
            if cycle.response_complete:
                cycle.transport.flush()
        self._one_writes = [c for c in self._one_writes if not c.response_complete]
        super().on_response_complete()

    # --------------------------------------------------------------- JSON errors
    def _send_json(self, status: int, code: str, message: str) -> None:
        self._disarm_head_timer()
        if self.cycle is not None and not self.cycle.response_complete and self.cycle.response_started:
            self.transport.close()  # an answer is already on its way: nothing valid can follow it
            return
        try:
            self.transport.write(_json_response(status, error_bytes(code, message)))
        except Exception:  # noqa: BLE001 - the connection is going away either way
            pass
        self.transport.close()
