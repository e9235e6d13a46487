"""Our exceptions and the one interceptor that turns them into precise gRPC status codes.

Handlers and the pipeline raise these; nothing else in the orchestrator calls `context.abort`.
"""

from __future__ import annotations

import logging

import grpc

from glmvoice.audio import AudioFormatError

log = logging.getLogger("glmvoice.orchestrator")


class OrchestratorError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidInput(OrchestratorError):
    """The client sent something we can never serve as given."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(OrchestratorError):
    code = grpc.StatusCode.UNAUTHENTICATED


class NotFound(OrchestratorError):
    """No such session for this caller (another owner's session is reported the same way)."""

    code = grpc.StatusCode.NOT_FOUND


class Exhausted(OrchestratorError):
    """This replica is at its stream limit, or a backend's queue is full: retry later or elsewhere."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BackendUnavailable(OrchestratorError):
    """Redis or a Triton model did not answer."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(OrchestratorError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, OrchestratorError):
        return exc.code, str(exc)
    if isinstance(exc, AudioFormatError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "timed out"
    log.exception("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


def _unary(behavior):
    async def wrapped(request, context):
        try:
            return await behavior(request, context)
        except Exception as exc:  # noqa: BLE001 - every failure leaves as a status, unknown ones as INTERNAL
            await context.abort(*status_of(exc))

    return wrapped


def _stream(behavior):
    async def wrapped(request_iterator, context):
        try:
            async for response in behavior(request_iterator, context):
                yield response
        except Exception as exc:  # noqa: BLE001 - every failure leaves as a status, unknown ones as INTERNAL
            await context.abort(*status_of(exc))

    return wrapped


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary and stream-stream handler: our exceptions -> their status codes."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer
            )
        return handler
