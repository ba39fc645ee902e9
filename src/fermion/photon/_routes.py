"""One HTTP route per handler: parse, call (batched, threaded or async), time out, serialize."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import TypeAdapter
from pydantic_core import PydanticSerializationError
from starlette.concurrency import iterate_in_threadpool
from starlette.datastructures import UploadFile

from ..errors import FermionError, error_body, shorten
from ._batching import Batcher
from ._handler import HandlerOptions
from ._signature import HandlerSignature, analyse

if TYPE_CHECKING:
    from ._app import PhotonRuntime

log = logging.getLogger("fermion.photon")

STREAM_EXTENSION = "x-fermion-stream"
BATCH_EXTENSION = "x-fermion-batch"
PARAMS_EXTENSION = "x-fermion-params"


def error_response(status: int, message: str, kind: str = "Error", detail: Any = None) -> Response:
    """A JSON error answer (see fermion.errors.error_body)."""
    return Response(error_body(message, kind, detail), status_code=status, media_type="application/json")


def validation_error_response(request: Request, exc: RequestValidationError) -> Response:
    """422 with a one-line message naming each invalid field, and FastAPI's details
    (each error's echoed ``input`` cut to 200 characters, or dropped when it is not a short value)."""
    errors = exc.errors()
    message = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}" for e in errors
    )
    detail = []
    for e in errors[:50]:  # a long list of bad items must not turn into a far longer answer
        e = {**e, "loc": [shorten(p) if isinstance(p, str) else p for p in e.get("loc", ())]}
        if isinstance(e.get("msg"), str):
            e["msg"] = shorten(e["msg"], 200)
        if "input" in e:
            value = e.pop("input")
            if isinstance(value, str):
                e["input"] = shorten(value, 200)
            elif value is None or isinstance(value, bool | float) or (isinstance(value, int) and abs(value) < 10**18):
                e["input"] = value
            # any other input (a list, an object: possibly the whole request body) is dropped
        detail.append(e)
    return error_response(422, message, "ValidationFailed", detail=detail)


class HandlerRoute:
    """Everything needed to serve one handler of a running photon."""

    def __init__(self, runtime: PhotonRuntime, opts: HandlerOptions, func: Callable[..., Any]) -> None:
        self.runtime = runtime
        self.opts = opts
        self.name = opts.name
        self.sig: HandlerSignature = analyse(func, method=opts.method, model_prefix=_camel(opts.name))
        self.is_async = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
        self.bound: Callable[..., Any] = getattr(runtime.instance, opts.name)
        self.adapter: TypeAdapter[Any] | None = (
            TypeAdapter(self.sig.return_annotation) if self.sig.response_kind == "json" else None
        )
        self.item_adapter: TypeAdapter[Any] = TypeAdapter(
            self.sig.return_annotation if self.sig.response_kind == "stream" else Any
        )
        self.batcher: Batcher | None = None
        if opts.batch is not None:
            max_latency = opts.batch.max_latency_ms
            self.batcher = Batcher(
                self._call_batch,
                max_size=opts.batch.max_size,
                max_wait_s=opts.batch.max_wait_ms / 1000,
                max_latency_s=max_latency / 1000 if max_latency is not None else None,
                on_batch=self._record_batch,
            )

    # -- calling the user's code ---------------------------------------------------------
    async def _invoke(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_async:
            return await self.bound(*args, **kwargs)
        return await anyio.to_thread.run_sync(
            functools.partial(self.bound, *args, **kwargs),
            limiter=self.runtime.limiter,
            abandon_on_cancel=True,
        )

    def _record_batch(self, size: int, waited_s: float, ran_s: float) -> None:
        metrics = self.runtime.metrics
        metrics.batch_size.labels(self.name).observe(size)
        metrics.batch_wait.labels(self.name).observe(waited_s)
        metrics.batch_seconds.labels(self.name).observe(ran_s)
        assert self.batcher is not None
        metrics.batch_cost.labels(self.name, "per_item").set(self.batcher.cost.per_item)
        metrics.batch_cost.labels(self.name, "fixed").set(self.batcher.cost.fixed)

    async def _call_batch(self, items: list[Any]) -> list[Any]:
        return await self._invoke(items)

    async def _call(self, kwargs: dict[str, Any]) -> Any:
        if self.batcher is not None:
            return await self.batcher.submit(next(iter(kwargs.values())))
        return await self._invoke(**kwargs)

    # -- the endpoint --------------------------------------------------------------------
    def register(self, app: FastAPI) -> None:
        route = self

        async def endpoint(request: Request, **params: Any) -> Response:
            return await route.handle(request, params)

        endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
            + self.sig.endpoint_params
        )
        extra: dict[str, Any] = {PARAMS_EXTENSION: [p.name for p in self.sig.params]}
        if self.sig.response_kind == "stream":
            extra[STREAM_EXTENSION] = True
        if self.opts.batch is not None:
            extra[BATCH_EXTENSION] = self.opts.batch.model_dump()
        responses: dict[int | str, dict[str, Any]] = {
            422: {"description": "Invalid input"},
            503: {"description": "Not ready"},
            504: {"description": "Handler timeout"},
        }
        response_model: Any = None
        if self.sig.response_kind == "json":
            response_model = self.sig.return_annotation
        elif self.sig.response_kind == "bytes":
            responses[200] = {"content": {"application/octet-stream": {}}}
        else:
            responses[200] = {"content": {"text/event-stream": {}, "application/x-ndjson": {}}}
        app.add_api_route(
            self.opts.path,
            endpoint,
            methods=[self.opts.method],
            name=self.name,
            operation_id=self.name,
            response_model=response_model,
            responses=responses,
            openapi_extra=extra,
            summary=self.name,
            description=inspect.getdoc(self.bound) or None,
        )

    async def _arguments(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.sig.request_kind == "json":
            body = params["body"]
            return {name: getattr(body, name) for name in type(body).model_fields}
        if self.sig.request_kind == "multipart":
            out = dict(params)
            for name in self.sig.byte_params:
                upload = out.get(name)
                if isinstance(upload, UploadFile):
                    out[name] = await upload.read()
            return out
        return params

    async def handle(self, request: Request, params: dict[str, Any]) -> Response:
        runtime = self.runtime
        if runtime.state != "ready":
            return error_response(503, runtime.not_ready_message(), "ServiceUnavailable")
        metrics = runtime.metrics
        kwargs = await self._arguments(params)
        if self.sig.response_kind == "stream":
            return self._stream(request, kwargs)
        in_flight = metrics.in_flight.labels(self.name)
        in_flight.inc()
        start = time.perf_counter()
        status = 200
        try:
            try:
                async with asyncio.timeout(self.opts.timeout_s) as deadline:
                    result = await self._call(kwargs)
            except TimeoutError:
                if deadline.expired():
                    metrics.timeouts.labels(self.name).inc()
                    status = 504
                    return error_response(
                        504, f"handler {self.name!r} ran past its {self.opts.timeout_s:g}s timeout", "HandlerTimeout"
                    )
                raise
            response = self._serialize(result)
            status = response.status_code
            return response
        except Exception as exc:  # the handler's own failure: report it, keep serving
            response = self._failure(exc)
            status = response.status_code
            return response
        finally:
            in_flight.dec()
            metrics.latency.labels(self.name).observe(time.perf_counter() - start)
            metrics.requests.labels(self.name, str(status)).inc()

    def _serialize(self, result: Any) -> Response:
        if self.sig.response_kind == "bytes":
            return Response(bytes(result), media_type="application/octet-stream")
        assert self.adapter is not None
        try:
            content = self.adapter.dump_json(result)
        except PydanticSerializationError as exc:
            return error_response(
                500, f"handler {self.name!r} returned a value that cannot be sent as JSON: {exc}", "SerializationError"
            )
        return Response(content, media_type="application/json")

    def _failure(self, exc: Exception) -> Response:
        if isinstance(exc, FermionError):
            return error_response(exc.http_status, str(exc), type(exc).__name__)
        if isinstance(exc, HTTPException):
            return error_response(exc.status_code, str(exc.detail), "HTTPException")
        log.exception("handler %s failed", self.name)
        return error_response(500, f"{type(exc).__name__}: {exc}", type(exc).__name__)

    # -- streaming -----------------------------------------------------------------------
    def _stream(self, request: Request, kwargs: dict[str, Any]) -> Response:
        sse = "text/event-stream" in request.headers.get("accept", "")
        items = self._iterate(kwargs)
        if sse:
            return StreamingResponse(self._sse(items), media_type="text/event-stream")
        ann = self.sig.return_annotation
        media = "text/plain; charset=utf-8" if ann is str else (
            "application/octet-stream" if ann is bytes else "application/x-ndjson"
        )
        return StreamingResponse(self._chunks(items), media_type=media)

    async def _iterate(self, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        metrics = self.runtime.metrics
        in_flight = metrics.in_flight.labels(self.name)
        in_flight.inc()
        start = time.perf_counter()
        status = "200"
        try:
            if self.is_async:
                async for item in self.bound(**kwargs):
                    yield item
            else:
                async for item in iterate_in_threadpool(self.bound(**kwargs)):
                    yield item
        except BaseException:
            status = "500"
            raise
        finally:
            in_flight.dec()
            metrics.latency.labels(self.name).observe(time.perf_counter() - start)
            metrics.requests.labels(self.name, status).inc()

    async def _chunks(self, items: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        async for item in items:
            if isinstance(item, bytes):
                yield item
            elif isinstance(item, str):
                yield item.encode()
            else:
                yield self.item_adapter.dump_json(item) + b"\n"

    async def _sse(self, items: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        try:
            async for item in items:
                yield b"data: " + self.item_adapter.dump_json(item) + b"\n\n"
        except Exception as exc:
            log.exception("streaming handler %s failed", self.name)
            payload = json.dumps({"type": type(exc).__name__, "message": str(exc)})
            yield f"event: error\ndata: {payload}\n\n".encode()
            return
        yield b"event: end\ndata: {}\n\n"


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))
