"""The Fermion server: API, controllers and gateway in one process over one state store."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import select

from .. import __version__
from .._limits import limit_bodies
from ..clouds import CloudConfig, Isolation, LocalCloud
from ..controllers import DeploymentController, JobController
from ..errors import FermionError
from ..gateway import Gateway, RoutingTable
from ..photon._routes import error_response, validation_error_response
from ..security import SecretBox, hash_token, new_token
from ..store import CloudRow, Store, TokenRow
from ._audit import audit_requests
from ._audit import router as audit_router
from ._auth import require_token
from ._jobs import on_job_success
from ._jobs import router as jobs_router
from ._routes import router
from ._secrets import router as secrets_router


def default_workloads_root(home: Path) -> Path:
    """``$FERMION_WORKLOADS`` or a folder beside the home, e.g. ~/.fermion-workloads."""
    return Path(os.environ.get("FERMION_WORKLOADS") or home.parent / f"{home.name}-workloads")


class Platform:
    """Everything the server holds: the store, the clouds, the controller, the gateway."""

    def __init__(self, home: Path, db_url: str, clouds: list[CloudConfig], public_url: str = "",
                 workloads_root: Path | None = None, isolation: Isolation | None = None) -> None:
        self.home = home
        home.chmod(0o700)  # its database, keys and tokens are the server's alone
        self.secrets = SecretBox(self.home)  # before the store: a bad master key stops the start
        self.public_url = public_url
        self.photon_store = home / "photon-store"
        self.photon_store.mkdir(parents=True, exist_ok=True)
        self.store = Store(db_url)
        # workloads live outside the home; a sandboxed one sees neither the home nor its neighbours
        self.workloads_root = workloads_root or default_workloads_root(home)
        self.workloads_root.mkdir(parents=True, exist_ok=True)
        self.isolation = isolation or Isolation()
        self.clouds = {c.name: LocalCloud(c, self.workloads_root, server_home=home, isolation=self.isolation)
                       for c in clouds}
        self.registry = CollectorRegistry()
        self.table = RoutingTable()
        with self.store.session() as s:
            self.token_hashes = {t.token_hash for t in s.scalars(select(TokenRow)).all()}
            for c in clouds:
                row = s.get(CloudRow, c.name)
                if row is None:
                    s.add(CloudRow(name=c.name, kind=c.kind, config=c.model_dump(), health="healthy"))
                    self.store.record(s, "cloud", c.name, "", "healthy", "configured")
                else:
                    row.config, row.health, row.health_reason = c.model_dump(), "healthy", ""
        self.gateway = Gateway(self.table, self.registry, self.token_hashes)
        self.controller = DeploymentController(self.store, self.clouds, self.table, open_env=self.secrets.open_env,
                                               artifacts_root=self.artifacts_root())
        self.jobs = JobController(self.store, self.clouds, self.controller,
                                  on_success=lambda s, job: on_job_success(self, s, job))

    def artifacts_root(self) -> Path:
        """Where registered model artifacts live (a replica may mount one of them, read-only)."""
        return self.home / "artifacts"

    def bootstrap_admin_token(self) -> str | None:
        """On the first start, create the admin token and return it (the only time it is seen)."""
        with self.store.session() as s:
            if s.scalars(select(TokenRow).limit(1)).first() is not None:
                return None
            token = new_token("fma")
            s.add(TokenRow(name="admin", token_hash=hash_token(token), role="admin"))
            self.store.record(s, "token", "admin", "", "created", "first start")
        self.token_hashes.add(hash_token(token))
        return token


def create_app(platform: Platform) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        platform.controller.start()
        platform.jobs.start()
        yield
        platform.jobs.stop()
        platform.controller.stop()
        await platform.gateway.close()
        platform.store.close()

    # no public schema and no /docs or /redoc (they load Swagger/ReDoc from a CDN): the schema is served below,
    # behind a token like every other route but /healthz
    app = FastAPI(title="Fermion", version=__version__, lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None)
    app.state.platform = platform

    @app.exception_handler(FermionError)
    async def _fermion_error(request: Request, exc: FermionError) -> Response:
        return error_response(exc.http_status, str(exc), type(exc).__name__)

    app.add_exception_handler(RequestValidationError, validation_error_response)  # type: ignore[arg-type]

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(require_token)])
    def metrics() -> Response:
        return Response(generate_latest(platform.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False, response_model=None, dependencies=[Depends(require_token)])
    def openapi() -> dict:
        return app.openapi()

    app.include_router(router)
    app.include_router(jobs_router)
    app.include_router(secrets_router)
    app.include_router(audit_router)
    return app


def create_asgi(platform: Platform):  # noqa: ANN201 - an ASGI callable
    """The API app, audited, with the gateway in front of it (gateway paths never reach FastAPI)."""
    return platform.gateway.wrap(limit_bodies(audit_requests(create_app(platform), platform.store)))
