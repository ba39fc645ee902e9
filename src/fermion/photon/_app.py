"""Build the ASGI app of a photon: its handler routes plus /healthz and /metrics."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from .. import __version__
from ._metrics import PhotonMetrics
from ._photon import Photon
from ._routes import HandlerRoute, validation_error_response

log = logging.getLogger("fermion.photon")

RuntimeState = Literal["initializing", "ready", "failed", "draining"]


class PhotonRuntime:
    """One replica's photon instance and its serving state."""

    def __init__(self, photon_cls: type[Photon], on_init_failure: Callable[[str], None] | None = None) -> None:
        self.photon_cls = photon_cls
        self.instance = photon_cls()
        self.metrics = PhotonMetrics()
        self.state: RuntimeState = "initializing"
        self.init_error: str | None = None
        self.limiter: anyio.CapacityLimiter | None = None
        self._on_init_failure = on_init_failure
        self.routes = [HandlerRoute(self, opts, func) for opts, func in photon_cls.handlers().values()]

    def not_ready_message(self) -> str:
        if self.state == "failed":
            return f"photon init failed: {self.init_error}"
        return f"photon is {self.state}"

    def _init(self) -> None:
        self.instance.init()
        # what init() loaded (a model: millions of objects) lives as long as the replica; frozen, it
        # is out of the collector's sight, and full collections stop pausing the handlers (150 ms
        # every 2.5 s under load with MiniLM, the embedder's whole tail); Ray Serve does the same
        gc.collect()
        gc.freeze()

    async def run_init(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._init)
        except Exception as exc:
            self.state = "failed"
            self.init_error = f"{type(exc).__name__}: {exc}"
            log.error("init() of %s failed:\n%s", self.photon_cls.__name__, traceback.format_exc())
            if self._on_init_failure is not None:
                self._on_init_failure(self.init_error)
            return
        self.state = "ready"
        log.info("photon %s is ready", self.photon_cls.photon_name())


def build_app(photon_cls: type[Photon], on_init_failure: Callable[[str], None] | None = None) -> FastAPI:
    """The FastAPI app serving ``photon_cls``. ``init()`` runs in the background at startup."""
    runtime = PhotonRuntime(photon_cls, on_init_failure)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.limiter = anyio.CapacityLimiter(photon_cls.max_concurrency)
        init_task = asyncio.create_task(runtime.run_init())
        yield
        if runtime.state == "ready":
            runtime.state = "draining"
        init_task.cancel()
        for route in runtime.routes:
            if route.batcher is not None:
                await route.batcher.close()

    app = FastAPI(
        title=photon_cls.photon_name(),
        version=__version__,
        description=(photon_cls.__doc__ or "").strip() or None,
        lifespan=lifespan,
    )
    app.state.runtime = runtime

    app.add_exception_handler(RequestValidationError, validation_error_response)  # type: ignore[arg-type]

    for route in runtime.routes:
        route.register(app)

    latency_ms = float(os.environ.get("FERMION_INJECT_LATENCY_MS") or 0)
    if latency_ms > 0:  # a local cloud declares network latency; every handler call pays it

        @app.middleware("http")
        async def _injected_latency(request: Request, call_next):  # noqa: ANN001, ANN202
            if request.url.path not in ("/healthz", "/metrics"):
                await asyncio.sleep(latency_ms / 1000)
            return await call_next(request)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        body = {"status": runtime.state, "photon": photon_cls.photon_name()}
        if runtime.state == "ready":
            return Response(json.dumps(body), media_type="application/json")
        body["message"] = runtime.not_ready_message()
        return Response(json.dumps(body), status_code=503, media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app

