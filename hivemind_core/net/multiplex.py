"""Request/response multiplexing shared by every transport that moves whole frames.

A concrete transport only says how to reach a peer (a *link*: a TCP connection, or the peer's
address in simulation) and how to write a frame on it; this class does the rest: request ids,
deadlines, cancellation, serving incoming requests, and failing everything cleanly when a link
or the transport goes away. Keeping it in one place is what makes TCP and simulation behave
the same.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import itertools
import logging
import types
from collections.abc import Coroutine, Generator, Hashable
from typing import Any

from .errors import (
    FrameTooLarge,
    PeerUnavailable,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    TransportClosed,
)
from .frames import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE, FrameKind
from .transport import Endpoint, RequestHandler, Transport

logger = logging.getLogger(__name__)

Link = Hashable


class _Pending:
    __slots__ = ("future", "link", "peer")

    def __init__(self, future: asyncio.Future[bytes], link: Link, peer: Endpoint) -> None:
        self.future = future
        self.link = link
        self.peer = peer


@types.coroutine
def _resume(coroutine: Coroutine[Any, Any, None], awaiting: Any) -> Generator[Any, Any, None]:
    """Go on with a coroutine whose first step already ran (and yielded ``awaiting``) as the
    task it becomes: hand the task what the coroutine waits on, then delegate everything to it.
    An exception thrown in while it waits (a cancellation) goes into the coroutine, as it would
    into a task's own."""
    while True:
        try:
            yield awaiting
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as error:
            try:
                awaiting = coroutine.throw(error)
            except StopIteration:
                return
            continue
        return (yield from coroutine)  # type: ignore[misc]


class FramedTransport(Transport):
    """A :class:`Transport` built from "open a link" and "write a frame on a link"."""

    _eager_serving = False
    """Whether a request's handler starts at once, in the call that delivered its frame, and
    becomes a task only if it has to wait (most answer at once: no task, no extra turn of the
    loop). Both shipped transports do; a transport whose handlers' first step may need to run
    in a task (``asyncio.timeout`` does) must not."""

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size <= HEADER_SIZE:
            raise ValueError(f"max_frame_size must exceed the {HEADER_SIZE}-byte header")
        self.max_frame_size = max_frame_size
        self._handler: RequestHandler | None = None
        self._pending: dict[int, _Pending] = {}
        self._serving: dict[tuple[Link, int], asyncio.Task[None]] = {}
        self._request_ids = itertools.count(1)
        self._closing = False
        self._closed: asyncio.Future[None] | None = None  # done once close() has released everything
        cls = type(self)
        self._counts_inflight = cls._on_inflight is not FramedTransport._on_inflight
        self._flow_controlled = cls._backlogged is not FramedTransport._backlogged
        """Whether the hooks do anything: the hot paths skip calls to ones that do not."""

    # ---- what a concrete transport provides ------------------------------------------------

    @abc.abstractmethod
    async def _open_link(self, peer: Endpoint, deadline: float) -> Link:
        """A link to ``peer``, ready for writing; raise a TransportError if there is none."""

    def _open_link_now(self, peer: Endpoint) -> Link | None:
        """A link to ``peer`` if one is ready without waiting, else None (then ``_open_link``
        is awaited): saves a coroutine per request where links cost nothing to open."""
        return None

    @abc.abstractmethod
    def _write(self, link: Link, kind: FrameKind, request_id: int, payload: bytes) -> None:
        """Queue one frame on ``link`` without blocking; do nothing if the link is gone."""

    def _backlogged(self, link: Link) -> bool:
        """Whether ``link`` holds more unsent data than it may (flow control); never, by default."""
        return False

    async def _drained(self, link: Link, until: asyncio.Future[bytes] | None = None) -> None:
        """Wait until ``link`` is no longer backlogged, is gone, or ``until`` is done."""

    @abc.abstractmethod
    def _sender(self, link: Link) -> Endpoint:
        """The endpoint a request handler is told it was called by."""

    @abc.abstractmethod
    def _reject(self, link: Link, request_id: int, reason: str) -> None:
        """React to a protocol violation seen on ``link``."""

    @abc.abstractmethod
    def _stop_accepting(self) -> None:
        """Stop taking new incoming requests (first step of closing)."""

    @abc.abstractmethod
    async def _close_links(self) -> None:
        """Release every link (last step of closing), even if cancelled while at it."""

    def _on_inflight(self, link: Link, *, serving: bool, delta: int) -> None:
        """Told whenever a request starts (+1) or ends (-1) on ``link``; for bookkeeping."""

    # ---- Transport ------------------------------------------------------------------------

    async def request(self, peer: Endpoint, payload: bytes, *, timeout: float) -> bytes:
        if self._closing:
            raise TransportClosed("cannot send: this transport is closed")
        if HEADER_SIZE + len(payload) > self.max_frame_size:
            raise FrameTooLarge(
                f"request of {len(payload)} bytes exceeds the {self.max_frame_size}-byte frame "
                f"limit (header included)"
            )
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        link = self._open_link_now(peer)
        if link is None:
            link = await self._open_link(peer, deadline)
        request_id = next(self._request_ids)
        future: asyncio.Future[bytes] = loop.create_future()
        self._pending[request_id] = _Pending(future, link, peer)
        if self._counts_inflight:
            self._on_inflight(link, serving=False, delta=1)
        timer = loop.call_at(deadline, self._expire, request_id, timeout)
        try:
            self._write(link, FrameKind.REQUEST, request_id, payload)
            if self._flow_controlled and self._backlogged(link):
                await self._drained(link, until=future)
            return await future
        except asyncio.CancelledError:
            if not self._closing:
                self._write(link, FrameKind.CANCEL, request_id, b"")
            raise
        finally:
            timer.cancel()
            del self._pending[request_id]
            if self._counts_inflight:
                self._on_inflight(link, serving=False, delta=-1)

    async def close(self, *, grace: float = 1.0) -> None:
        """Close once; a second call waits until the first has finished.

        A caller cancelled during the grace still fails the requests and closes the links
        before the cancellation goes on, so nothing is left open.
        """
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        if self._closing:
            return  # closed without a goodbye (a simulated crash): nothing left to release
        self._closing = True
        self._closed = asyncio.get_running_loop().create_future()
        try:
            self._stop_accepting()
            serving = list(self._serving.values())
            if serving and grace > 0:
                await asyncio.wait(serving, timeout=grace)
        finally:
            self._abandon("transport closed while a request to {peer} was in flight")
            try:
                await self._close_links()
            finally:
                self._closed.set_result(None)

    def _abandon(self, reason: str) -> None:
        """Stop serving and fail this side's pending requests (``reason`` may name ``{peer}``)."""
        for task in self._serving.values():
            task.cancel()
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(TransportClosed(reason.format(peer=pending.peer)))

    def _active_links(self) -> list[Link]:
        """Links with a request in flight either way, in the order they were first used."""
        links = [pending.link for pending in self._pending.values()]
        links += [link for link, _ in self._serving]
        return list(dict.fromkeys(links))

    # ---- called by the concrete transport when frames arrive or links break ---------------

    def _frame_received(self, link: Link, kind: int, request_id: int, payload: bytes) -> None:
        if kind == FrameKind.REQUEST:
            self._start_serving(link, request_id, payload)
        elif kind == FrameKind.RESPONSE or kind == FrameKind.ERROR:
            pending = self._pending.get(request_id)
            if pending is None or pending.link != link or pending.future.done():
                return  # a late answer to a request that timed out or was cancelled
            if kind == FrameKind.RESPONSE:
                pending.future.set_result(payload)
            else:
                reason = payload.decode("utf-8", errors="replace")
                pending.future.set_exception(
                    RemoteError(reason, remote_type="RemoteTransportError", peer=pending.peer)
                )
        elif kind == FrameKind.CANCEL:
            task = self._serving.get((link, request_id))
            if task is not None:
                task.cancel()
        else:
            self._reject(link, request_id, f"unknown frame kind {kind}")

    def _link_lost(self, link: Link, reason: str, *, own_requests: bool = True, serving: bool = True) -> None:
        """Fail this side's requests on ``link`` and stop serving the other side's.

        A transport whose link stands for several connections (simulation: one per direction)
        says which of the two went: ``own_requests`` (the one we dialled) and ``serving`` (the
        one the peer dialled).
        """
        if own_requests:
            for pending in self._pending.values():
                if pending.link == link and not pending.future.done():
                    pending.future.set_exception(PeerUnavailable(reason))
        if serving:
            for (served_link, _), task in list(self._serving.items()):
                if served_link == link:
                    task.cancel()

    # ---- internals ------------------------------------------------------------------------

    def _expire(self, request_id: int, timeout: float) -> None:
        pending = self._pending.get(request_id)
        if pending is None or pending.future.done():
            return
        pending.future.set_exception(RequestTimeout(f"no response from {pending.peer} within {timeout:g} s"))
        self._write(pending.link, FrameKind.CANCEL, request_id, b"")

    def _start_serving(self, link: Link, request_id: int, payload: bytes) -> None:
        if self._handler is None or self._closing:
            why = "is shutting down" if self._closing else "does not accept requests (client mode)"
            self._write(link, FrameKind.ERROR, request_id, f"this peer {why}".encode())
            return
        key = (link, request_id)
        if key in self._serving:
            self._reject(link, request_id, f"request id {request_id} is already in use")
            return
        if self._counts_inflight:
            self._on_inflight(link, serving=True, delta=1)
        serve = self._serve(link, request_id, payload)
        if not self._eager_serving:
            self._serving[key] = asyncio.get_running_loop().create_task(serve)
            return
        context = contextvars.copy_context()
        try:  # eagerly, as a task's first step would: most handlers answer without waiting
            awaiting = context.run(serve.send, None)
        except StopIteration:
            return  # answered (or refused) already: no task needed
        except Exception:
            logger.exception("serving request %d from %s failed", request_id, self._sender(link))
            return
        self._serving[key] = asyncio.get_running_loop().create_task(_resume(serve, awaiting), context=context)

    async def _serve(self, link: Link, request_id: int, payload: bytes) -> None:
        """Run the handler and send its answer; both wait while the link is backlogged.

        Waiting before the handler keeps a peer that does not read its replies from having
        more computed for it; waiting before the write bounds what is queued on its link.
        """
        assert self._handler is not None
        flow_controlled = self._flow_controlled
        try:
            if flow_controlled and self._backlogged(link):
                await self._drained(link)
            try:
                response = await self._handler(self._sender(link), payload)
            except ProtocolError as error:
                self._reject(link, request_id, str(error))
                return
            except Exception as error:
                logger.exception("request handler failed for a request from %s", self._sender(link))
                self._write_error(link, request_id, f"handler failed: {type(error).__name__}: {error}")
                return
            if flow_controlled and self._backlogged(link):
                await self._drained(link)
            if not isinstance(response, bytes | bytearray | memoryview):
                self._write_error(link, request_id, f"handler returned {type(response).__name__}, not bytes")
            elif HEADER_SIZE + len(response) > self.max_frame_size:
                self._write_error(
                    link,
                    request_id,
                    f"response of {len(response)} bytes exceeds the {self.max_frame_size}-byte frame limit",
                )
            else:
                self._write(link, FrameKind.RESPONSE, request_id, bytes(response))
        finally:
            self._serving.pop((link, request_id), None)  # absent if it never had to wait
            if self._counts_inflight:
                self._on_inflight(link, serving=True, delta=-1)

    def _write_error(self, link: Link, request_id: int, reason: str) -> None:
        self._write(link, FrameKind.ERROR, request_id, reason.encode("utf-8", errors="replace"))
