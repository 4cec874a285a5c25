"""The replica's gRPC server: grpc core's completion queue, polled by a few threads, each of
which takes a call from its arrival to its answer. Unary methods only, which is all the Open
Inference Protocol and the health check's `Check` need.

NOTE: why not `grpc.server`: its Python layer hands each call from the one thread that polls
the completion queue to a pool thread, which asks for the request message and then waits for
the polling thread to deliver it, with futures, locks and a ServicerContext in between: two
thread wake-ups and most of the ~155 µs of replica CPU a one-row call cost. Here the thread
that polls an event handles it, as grpc's C++ synchronous server does: no hand-off, no waiting
on another thread. The A/B figures are in benchmarks/README.md ("What changed, and what each
change bought").

NOTE: this drives grpcio's Cython layer (`grpc._cython.cygrpc`), the same calls grpcio's own
server makes, which is not a public API: grpcio is pinned in requirements.lock, and
tests/inference/test_grpc_server.py covers every part of it used here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from grpc._cython import cygrpc  # type: ignore[attr-defined]

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]

_NEW_CALL = object()
_SHUTDOWN = object()
_NO_FLAGS = 0


class CallAborted(Exception):
    """Raised by `CallContext.abort`: the call ends with this status and no message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class CallContext:
    """What a handler sees of its call: the part of `grpc.ServicerContext` our servicers and
    grpc_health's `HealthServicer.Check` use."""

    __slots__ = ("_metadata", "code", "details", "trailing_metadata")

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata
        self.trailing_metadata: Metadata = ()
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def set_trailing_metadata(self, metadata: Metadata) -> None:
        self.trailing_metadata = tuple(metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise CallAborted(code, details)


@dataclass(frozen=True, slots=True)
class UnaryMethod:
    """One unary RPC: how its request is parsed and who answers it."""

    parse: Callable[[bytes], Any]
    handle: Callable[[Any, CallContext], Any]
    """Returns the response message, or raises (`CallContext.abort` for a chosen status)."""
    open: bool = False
    """Callable without the API key (health checks)."""


def unary_methods(
    service: Any, messages: Any, servicer: Any, open_methods: frozenset[str] = frozenset()
) -> dict[str, UnaryMethod]:
    """The methods of `service` (a protobuf ServiceDescriptor) answered by the `servicer`
    method of the same name, with requests parsed by the `messages` module's classes."""
    methods = {}
    for method in service.methods:
        path = f"/{service.full_name}/{method.name}"
        methods[path] = UnaryMethod(
            parse=getattr(messages, method.input_type.name).FromString,
            handle=getattr(servicer, method.name),
            open=path in open_methods,
        )
    return methods


class _Received:
    """The tag of a call's request message: what its handler needs once the message is in."""

    __slots__ = ("call", "metadata", "method", "path")

    def __init__(self, call: Any, path: str, method: UnaryMethod, metadata: Metadata) -> None:
        self.call = call
        self.path = path
        self.method = method
        self.metadata = metadata


class _Answered:
    """The tag of a call's last batch (its status): once it completes, the call is over."""

    __slots__ = ("call",)

    def __init__(self, call: Any) -> None:
        self.call = call


class CoreServer:
    """A unary gRPC server whose `threads` each poll grpc core and answer what they take."""

    def __init__(
        self,
        methods: Mapping[str, UnaryMethod],
        *,
        threads: int,
        options: Sequence[tuple[str, Any]] = (),
        authorized: Callable[[Metadata], bool] | None = None,
        refusal: tuple[grpc.StatusCode, str] = (grpc.StatusCode.UNAUTHENTICATED, "refused"),
    ) -> None:
        """`authorized`, when given, is asked about every call to a method that is not
        `open`; a call it refuses ends with `refusal`."""
        if threads < 1:
            raise ValueError("a gRPC server needs at least one thread")
        self._methods = dict(methods)
        self._threads = threads
        self._authorized = authorized
        self._refusal = refusal
        self._queue = cygrpc.CompletionQueue()
        self._server = cygrpc.Server(tuple(options), False)
        self._server.register_completion_queue(self._queue)
        self._lock = threading.Lock()
        self._stage = "new"
        self._running = 0
        self._calls = 0
        """Calls between their arrival and their last batch's completion."""
        self._shutdown_notified = False
        self.stopped = threading.Event()
        """Set once every thread has returned after `stop`."""

    def add_insecure_port(self, address: str) -> int:
        port = int(self._server.add_http2_port(address.encode()))
        if port == 0:
            raise RuntimeError(f"gRPC could not listen on {address}")
        return port

    def start(self) -> None:
        with self._lock:
            if self._stage != "new":
                raise RuntimeError("a gRPC server starts once")
            self._server.start()
            self._stage = "serving"
            # NOTE: one call asked for ahead per thread: core queues calls that arrive while
            # none is asked for, but each one asked for ahead saves that wait.
            for _ in range(self._threads):
                self._server.request_call(self._queue, self._queue, _NEW_CALL)
            self._running = self._threads
            for i in range(self._threads):
                threading.Thread(target=self._poll, name=f"grpc-{i}", daemon=True).start()

    def stop(self, grace_s: float) -> threading.Event:
        """Take no new calls, give those in flight `grace_s` to finish, then cancel them.
        Returns `stopped`, set once the server is down."""
        with self._lock:
            if self._stage == "new":
                self._stage = "stopped"
                self.stopped.set()
            if self._stage != "serving":
                return self.stopped
            self._stage = "stopping"
            self._server.shutdown(self._queue, _SHUTDOWN)
        timer = threading.Timer(grace_s, self._cancel_all_calls)
        timer.daemon = True
        timer.start()
        return self.stopped

    def _cancel_all_calls(self) -> None:
        with self._lock:
            if self._stage == "stopping":
                self._server.cancel_all_calls()

    def _poll(self) -> None:
        queue = self._queue
        try:
            while True:
                event = queue.poll()
                if event.completion_type == cygrpc.CompletionType.queue_shutdown:
                    return
                if event.completion_type != cygrpc.CompletionType.operation_complete:
                    continue
                tag = event.tag
                try:
                    if tag.__class__ is _Received:
                        self._answer(tag, event)
                    elif tag.__class__ is _Answered:
                        self._call_over()
                    elif tag is _NEW_CALL:
                        self._arrived(event)
                    elif tag is _SHUTDOWN:
                        self._call_over(counted=False, shutdown_reported=True)
                except Exception:
                    log.exception("gRPC server: a call could not be handled")
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self.stopped.set()

    def _call_over(self, counted: bool = True, shutdown_reported: bool = False) -> None:
        """One call fewer; after `stop`, the last one down releases the server.

        NOTE: grpc core reports the shutdown done once no call has a batch pending, which a
        call whose handler is still running does not: its answer is yet to be sent, and a
        batch started on a completion queue that is shut down aborts the process. So the
        queue is shut down only when core has reported and no call of ours is in flight."""
        with self._lock:
            if counted:
                self._calls -= 1
            if shutdown_reported:
                self._shutdown_notified = True
            if not self._shutdown_notified or self._calls or self._stage == "stopped":
                return
            self._stage = "stopped"
            self._server.destroy()
        self._queue.shutdown()

    def _arrived(self, event: Any) -> None:
        if not event.success:  # the server is shutting down: calls asked for are refused
            return
        with self._lock:
            self._calls += 1
            if self._stage == "serving":
                self._server.request_call(self._queue, self._queue, _NEW_CALL)
        call = event.call
        # NOTE: the path is the client's bytes: anything that is not UTF-8 is no method of ours.
        path = event.call_details.method.decode(errors="replace")
        method = self._methods.get(path)
        if method is None:
            _end(call, grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path}")
            return
        metadata = event.invocation_metadata
        if not method.open and self._authorized is not None and not self._authorized(metadata):
            _end(call, *self._refusal)
            return
        call.start_server_batch(
            (cygrpc.ReceiveMessageOperation(_NO_FLAGS),), _Received(call, path, method, metadata)
        )

    def _answer(self, received: _Received, event: Any) -> None:
        if not event.success:  # cancelled, or the connection went, before the message came
            self._call_over()
            return
        call = received.call
        data = event.batch_operations[0].message()
        if data is None:
            _end(call, grpc.StatusCode.INVALID_ARGUMENT, f"{received.path} needs one message")
            return
        try:
            request = received.method.parse(data)
        except Exception:
            _end(
                call,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request to {received.path} is not a valid protobuf message",
            )
            return
        context = CallContext(received.metadata)
        try:
            body = received.method.handle(request, context).SerializeToString()
        except CallAborted as aborted:
            _end(call, aborted.code, aborted.details, context.trailing_metadata)
            return
        except Exception:
            log.exception("%s failed unexpectedly", received.path)
            _end(call, grpc.StatusCode.INTERNAL, f"{received.path} failed inside the replica")
            return
        if context.code is not None and context.code is not grpc.StatusCode.OK:
            _end(call, context.code, context.details, context.trailing_metadata)
            return
        call.start_server_batch(
            (
                cygrpc.SendInitialMetadataOperation(None, _NO_FLAGS),
                cygrpc.SendMessageOperation(body, _NO_FLAGS),
                cygrpc.SendStatusFromServerOperation(
                    context.trailing_metadata, cygrpc.StatusCode.ok, b"", _NO_FLAGS
                ),
            ),
            _Answered(call),
        )


def _end(call: Any, code: grpc.StatusCode, details: str, trailing: Metadata = ()) -> None:
    """End `call` with a status and no message."""
    call.start_server_batch(
        (
            cygrpc.SendInitialMetadataOperation(None, _NO_FLAGS),
            cygrpc.SendStatusFromServerOperation(
                trailing, code.value[0], details.encode(), _NO_FLAGS
            ),
        ),
        _Answered(call),
    )
