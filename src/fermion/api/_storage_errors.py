"""Answers for a server that cannot write its state (a full or read-only disk, a database that is
locked, unreachable or corrupt): the cause and the fix in Fermion's error shape, never a bare 500.
The CLI prints the message as it is."""

from __future__ import annotations

import errno
import logging

from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy.exc import DatabaseError, DBAPIError, OperationalError

from ..photon.runtime import error_response
from ..store import db_error_text, explain_db_error

log = logging.getLogger("fermion.api")

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def install_storage_error_handlers(app: FastAPI) -> None:
    """Map database and disk errors that have a known cause to 507 / 503 with what to do."""

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> Response:
        answer = explain_db_error(exc)
        if answer is None:
            # an integrity or programming error is a bug: let it be the 500 it is (with its traceback)
            if not isinstance(exc, OperationalError) and type(exc) is not DatabaseError:
                raise exc
            answer = 503, f"the server's database failed: {db_error_text(exc)}"
        status, message = answer
        log.error("%s %s: %s (%s)", request.method, request.url.path, message, db_error_text(exc))
        return error_response(status, message, "StorageError")

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> Response:
        if exc.errno in DISK_FULL:
            status, message = 507, "the server's disk is full: nothing was saved; free space in its home and retry"
        elif exc.errno == errno.EROFS:
            status, message = 503, "the server's disk is read-only: nothing was saved; make its home writable and retry"
        else:
            raise exc
        log.error("%s %s: %s (%s)", request.method, request.url.path, message, exc)
        return error_response(status, message, "StorageError")
