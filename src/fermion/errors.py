"""One exception tree for Fermion. Each error knows its HTTP status and CLI exit code."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def shorten(value: str, limit: int = 80) -> str:
    """``value`` cut to ``limit`` characters (plus "…"), so that user input echoed in a message stays short."""
    return value if len(value) <= limit else value[:limit] + "…"


def error_body(message: str, kind: str = "Error", detail: Any = None) -> bytes:
    """The JSON body of every error Fermion answers; the message is capped, as it may quote the client's input."""
    body: dict[str, Any] = {"error": {"type": kind, "message": shorten(message, 500)}}
    if detail is not None:
        body["detail"] = detail
    return json.dumps(body, default=str).encode()


async def send_error(send: Any, status: int, message: str, kind: str,
                     headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer an error on a raw ASGI ``send`` (for the layers in front of FastAPI)."""
    body = error_body(message, kind)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class FermionError(Exception):
    """Base of every error Fermion raises on purpose; its message is meant for the user."""

    http_status: int = 500
    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UserInputError(FermionError):
    """The request, spec or command line is wrong; the user can fix it."""

    http_status = 400
    exit_code = 2


class NotFoundError(FermionError):
    http_status = 404
    exit_code = 3


class ConflictError(FermionError):
    http_status = 409
    exit_code = 4


class AuthError(FermionError):
    http_status = 401
    exit_code = 5


class PermissionDeniedError(FermionError):
    http_status = 403
    exit_code = 5


class PhotonLoadError(UserInputError):
    """A photon entry point or archive could not be loaded."""


class UnsafeArchiveError(PhotonLoadError):
    """A .photon archive holds an absolute path, a '..' component or a link."""


class RemoteError(FermionError):
    """A server answered with an error; carries its status and message."""

    def __init__(self, status: int, message: str, *, detail: object = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.server_message = message
        self.detail = detail
        self.http_status = status
        self.exit_code = _EXIT_BY_STATUS.get(status, 1)


_EXIT_BY_STATUS = {
    400: UserInputError.exit_code,
    422: UserInputError.exit_code,
    404: NotFoundError.exit_code,
    409: ConflictError.exit_code,
    401: AuthError.exit_code,
    403: PermissionDeniedError.exit_code,
}


class ValidationFailed(RemoteError, UserInputError):
    """The server rejected the input (HTTP 422)."""


# a server's 4xx is also the error it names: `except NotFoundError` catches a 404 from afar too
class RemoteUserInputError(RemoteError, UserInputError):
    """The server found the request wrong (HTTP 400)."""


class RemoteNotFound(RemoteError, NotFoundError):
    """HTTP 404."""


class RemoteConflict(RemoteError, ConflictError):
    """HTTP 409: the object's state forbids it now."""


class RemoteAuthError(RemoteError, AuthError):
    """HTTP 401."""


class RemotePermissionDenied(RemoteError, PermissionDeniedError):
    """HTTP 403."""


class HandlerTimeout(RemoteError):
    """The handler ran past its timeout (HTTP 504)."""


class ServiceUnavailable(RemoteError):
    """The server is not ready or is draining (HTTP 503)."""


class TimedOut(FermionError, TimeoutError):
    """Waited as long as asked, and what was awaited has not happened (it may still)."""

    http_status = 504
    exit_code = 7


class TransportError(FermionError):
    """The server could not be reached or did not answer in time."""

    exit_code = 6


def remote_error_for(status: int, message: str, detail: object = None) -> RemoteError:
    """The most specific RemoteError subclass for an HTTP status."""
    cls = {400: RemoteUserInputError, 401: RemoteAuthError, 403: RemotePermissionDenied, 404: RemoteNotFound,
           409: RemoteConflict, 422: ValidationFailed, 504: HandlerTimeout,
           503: ServiceUnavailable}.get(status, RemoteError)
    return cls(status, message, detail=detail)
