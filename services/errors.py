"""Every answer other than success, typed once and mapped once to HTTP and gRPC.

Code raises one of these; the typed routes (services/model.py), OIP REST (oip/rest.py) and OIP
gRPC (oip/grpc_server.py) each turn it into an answer in one place. Nothing else catches them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc


class RoostError(Exception):
    status: ClassVar[int] = 500
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    outcome: ClassVar[str] = "error"  # roost_requests_total{outcome}
    retry_after: ClassVar[int | None] = None

    def __init__(self, message: str, field: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.field:
            body["field"] = self.field
        return body

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}


class InvalidInput(RoostError):
    """The client sent something the model cannot take: 400 for a request that cannot be read,
    422 for an invalid field, 413 for one too large. The field is named where there is one."""

    status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    outcome = "client_error"

    def __init__(self, field: str | None, message: str, status: int = 400):
        super().__init__(f"{field}: {message}" if field else message, field=field, status=status)


class NotFound(RoostError):
    status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    outcome = "client_error"


class Overloaded(RoostError):
    """The model's queue is full: retry shortly (or elsewhere)."""

    status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    outcome = "rejected"
    retry_after = 1


class DeadlineExceeded(RoostError):
    status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    outcome = "rejected"
    reject_reason = "timeout"


class Unavailable(RoostError):
    """Not ready yet, or shutting down."""

    status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    outcome = "rejected"
    retry_after = 1


class QueueTimeout(Unavailable):
    """Queued longer than the model's latency target: shed unrun, so what is accepted stays fast."""

    reject_reason = "queue_timeout"


class InternalError(RoostError):
    """A bug or a runtime failure: logged with its traceback, answered without it."""


def as_roost_error(exc: BaseException) -> RoostError:
    return exc if isinstance(exc, RoostError) else InternalError("inference failed; see the server log")
