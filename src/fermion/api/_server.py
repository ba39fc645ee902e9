"""The Fermion server: API, controllers and gateway in one process over one state store."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import __version__
from .._files import write_atomic
from .._limits import is_upload, limit_bodies
from ..backends import AgentBackend, Backend, FaultInjector, Isolation, make_backend
from ..clouds import CloudConfig
from ..config import stores_root, workload_socket
from ..config import workloads_root as default_workloads_root
from ..data import ObjectStore, StoreConfig, open_store
from ..control import (
    DeploymentController,
    JobController,
    Leadership,
    PipelineController,
    Scheduler,
    Telemetry,
    stop_on_retired_clouds,
    stop_orphans,
    wanted_workloads,
)
from ..errors import ConflictError, FermionError, UserInputError
from ..gateway import LOAD_STALE_S, Endpoint, Gateway, LoadBoard, RoutingTable, add_loads
from ..photon.runtime import error_response, validation_error_response
from ..security import SecretBox, hash_token, new_token
from ..store import (
    DEFAULT_PROJECT,
    CloudRow,
    DeploymentRow,
    GatewayLoadRow,
    JobRow,
    ProjectRow,
    Store,
    TokenRow,
    UserRow,
)
from ._access import router as access_router
from ._agents import router as agents_router
from ._audit import audit_requests
from ._audit import router as audit_router
from ._artifacts import attempt_router as attempt_model_router
from ._artifacts import replica_router as replica_model_router
from ._checkpoints import attempt_token, attempt_token_valid
from ._checkpoints import datasets_router as attempt_datasets_router
from ._checkpoints import metrics_router as attempt_metrics_router
from ._checkpoints import output_router as attempt_output_router
from ._checkpoints import router as checkpoints_router
from ._code import attempt_router as attempt_code_router
from ._code import router as code_router
from ._datasets import data_moves, stores_router
from ._datasets import router as datasets_router
from ._gateway_feed import router as gateway_feed_router
from ._pipelines import router as pipelines_router
from ._pipelines import start_run
from ._ui import router as ui_api_router
from ._ui import ui_router
from ._auth import require_token
from ._jobs import on_job_success
from ._jobs import router as jobs_router
from ._principal import Principal, live_token
from ._routes import router
from ._secrets import router as secrets_router
from ._stream import StreamHub
from ._storage_errors import install_storage_error_handlers


def read_or_create_id(path: Path) -> str:
    """This server's identity, kept in its home."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        write_atomic(path, f"srv-{uuid.uuid4().hex[:12]}", 0o600)
        return path.read_text().strip()


class Platform:
    """Everything the server holds: the store, the clouds, the controller, the gateway."""

    def __init__(self, home: Path, db_url: str, clouds: list[CloudConfig], public_url: str = "",
                 workloads_root: Path | None = None, isolation: Isolation | None = None,
                 server_ca: str | None = None, backends: Mapping[str, Backend] | None = None) -> None:
        """``backends``: what runs some clouds' workloads instead of the backend their configs name (a
        test's or benchmark's, e.g. fermion.testing.InstantBackend)."""
        backends = backends or {}
        self.home = home
        # the certificate a job attempt verifies this server with, when it serves HTTPS (public: no secret)
        self.server_ca_pem = Path(server_ca).read_text() if server_ca else None
        self.server_ca_file = server_ca
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
        self.configs = {c.name: c for c in clouds}
        self.registry = CollectorRegistry()
        self.table = RoutingTable()
        self.epoch = uuid.uuid4().hex[:8]  # versions of this process's table; a restart starts anew
        self.stopping: Callable[[], bool] = lambda: False  # set by whoever runs the HTTP server
        with self.store.session() as s:
            if s.get(UserRow, "admin") is None:  # also for a database from before users existed
                s.add(UserRow(name="admin", admin=True))
            if s.get(ProjectRow, DEFAULT_PROJECT) is None:
                s.add(ProjectRow(name=DEFAULT_PROJECT))
            down = set()
            for c in clouds:
                row = s.get(CloudRow, c.name)
                if row is None:
                    s.add(CloudRow(name=c.name, kind=c.kind, config=c.model_dump(), health="healthy"))
                    self.store.record(s, "cloud", c.name, "", "healthy", "configured")
                elif row.outage:  # an injected outage lasts until `fermion cloud recover`, across restarts
                    row.config, row.kind = c.model_dump(), c.kind
                    down.add(c.name)
                else:
                    row.config, row.kind, row.health, row.health_reason = c.model_dump(), c.kind, "healthy", ""
        # one object store per cloud: a local cloud's is a folder of its own beside the home by default
        self.stores: dict[str, ObjectStore] = {
            c.name: open_store(c.store or StoreConfig(url=f"file://{stores_root(home.resolve()) / c.name}"), c.name) for c in clouds}
        # a folder store is the server's to read and write: no workload may see it (they go through the API)
        default = stores_root(home.resolve())
        self.store_folders = [default] + [Path(s.root) for s in self.stores.values()
                                          if s.fs is None and not Path(s.root).is_relative_to(default)]
        for folder in self.store_folders:
            folder.mkdir(parents=True, exist_ok=True)
        self.clouds: dict[str, FaultInjector] = {
            c.name: FaultInjector(backends[c.name], c.inject, down=c.name in down) if c.name in backends else
            make_backend(c, self.workloads_root, server_home=home, isolation=self.isolation, down=c.name in down,
                         hidden=self.store_folders, api_socket=workload_socket(home))
            for c in clouds}
        for name, backend in self.clouds.items():  # an agent that dials in stops what the server no longer wants
            if isinstance(backend.inner, AgentBackend):
                backend.inner.wanted = lambda ids, cloud=name: wanted_workloads(self.store, ids, cloud)
        self.gateway = Gateway(self.table, self.registry, {})
        self.loadboard = LoadBoard()  # what gateway processes report of their load
        self.refresh_gateway_admins()
        self.scheduler = Scheduler(self.store, self.clouds, observed_latency=self.observed_latency,
                                   observed_failure_rate=self.observed_failure_rate)
        server_id = read_or_create_id(home / "server-id")  # the same after a restart: its leases are its own
        self.server_id = server_id
        self.peer_loads: dict[str, tuple[int, int, float]] = {}  # what the other servers' gateways see
        self.controller = DeploymentController(self.store, self.scheduler, self.table,
                                               open_env=lambda s, env, purpose, project: self.secrets.open_env(
                                                   s, env, purpose, project=project),
                                               owner=f"{server_id}/deployments", model_env=self.model_env,
                                               fetch_archive=self.fetch_archive, load=self.load,
                                               registry=self.registry, traffic=self.gateway.traffic)
        self.gateway.on_queue = lambda _deployment: self.controller.nudge()
        self.telemetry = Telemetry(self.table)  # what the replicas serve over time: the dashboard's charts
        self.registry.register(self.telemetry.collector())
        self.jobs = JobController(self.store, self.scheduler, self.controller, owner=f"{server_id}/jobs",
                                  on_success=lambda s, job: on_job_success(self, s, job),
                                  attempt_env=self.attempt_env, data_moves=lambda pinned: data_moves(self, pinned))
        self.pipelines = PipelineController(self.store, open_token=self.secrets.open, connect=self._connect_as,
                                            start_run=lambda name, why: start_run(self, name, why),
                                            revoke=self._revoke_token)
        self.leadership = Leadership(self.store, server_id, public_url, on_lead=self._lead, on_follow=self._follow,
                                     follow_tick=self.controller.publish_from_store,
                                     every_step=self._sync_from_store)

    def reachable_stores(self) -> list[str]:
        """The clouds whose stores can be used now: a cloud that is down has taken its store with it."""
        return [c for c in sorted(self.stores) if not self.clouds[c].down]

    def fetch_archive(self, sha256: str) -> Path | None:
        """A photon's archive this server's disk lacks, fetched from the stores into its photon store."""
        from ._artifacts import fetch_archive

        dest = self.photon_store / f"{sha256}.photon"
        return dest if dest.is_file() or fetch_archive(self, sha256, dest) else None

    def model_env(self, s: Session, ref: str, project: str, replica_id: str) -> dict[str, str]:
        """How a replica that serves registry model ``ref`` fetches it from the stores: the digest,
        this server's URL (and certificate), and a token of the replica's own (when one is named)."""
        from ._artifacts import replica_token, resolve_model, stored_digest

        row = resolve_model(s, ref, project)
        digest = stored_digest(row.artifact_uri)
        if digest is None:
            raise UserInputError(f"model {ref} is kept in a folder, not in the stores",
                                 hint=f"deploy it with FERMION_MODEL_DIR={row.artifact_uri}")
        if not self.public_url:
            raise UserInputError("this server has no URL its replicas could fetch the model from",
                                 hint="run it with `fermion server start`, which serves at that URL")
        env = {"FERMION_MODEL_DIGEST": digest, "FERMION_SERVER_URL": self.public_url}
        if replica_id:
            env["FERMION_REPLICA_TOKEN"] = replica_token(self, replica_id)
        if self.server_ca_pem:
            env["FERMION_SERVER_CA_PEM"] = self.server_ca_pem
        return env

    def attempt_env(self, attempt_id: str) -> dict[str, str]:
        """How a job attempt reaches this server to send and fetch its checkpoints."""
        if not self.public_url:
            return {}
        env = {"FERMION_SERVER_URL": self.public_url, "FERMION_ATTEMPT_TOKEN": attempt_token(self, attempt_id)}
        if self.server_ca_pem:
            env["FERMION_SERVER_CA_PEM"] = self.server_ca_pem
        return env

    def _lead(self) -> None:
        """The loops, each settling once before returning (the first pass reads the ledger from the store)."""
        # the sole controller now: a dead leader's leases on deployments and jobs are not waited out
        self.store.release_others(DeploymentRow, self.controller.owner)
        self.store.release_others(JobRow, self.jobs.owner)
        for backend in self.clouds.values():  # agents dial in to the leader: they get their time to find it
            if isinstance(backend.inner, AgentBackend):
                backend.inner.give_time()
        # before the first pass replaces them elsewhere: what runs on a cloud no longer configured stops
        stop_on_retired_clouds(self.store, self.clouds, lambda config: make_backend(
            config, self.workloads_root, server_home=self.home, isolation=self.isolation, hidden=self.store_folders,
            api_socket=workload_socket(self.home)))
        self.controller.start()
        self.jobs.start()
        self.pipelines.start()
        stop_orphans(self.store, self.clouds)  # after the first pass: what no row knows now, no one ever will

    def _follow(self) -> None:
        try:
            self.pipelines.stop()
            self.jobs.stop()
        finally:
            self.controller.stop()

    def _connect_as(self, token: str):  # noqa: ANN202 - an SDK Connection
        """The SDK on this server's own URL, as a token's owner: how a pipeline run acts."""
        from ..sdk import Connection, Credentials, Transport

        if not self.public_url:
            raise UserInputError("this server has no URL a pipeline run could act through",
                                 hint="run it with `fermion server start`, which serves at that URL")
        return Connection(Transport(Credentials(self.public_url, token, self.server_ca_file), timeout=120))

    def _revoke_token(self, token_id: str) -> None:
        with self.store.session() as s:
            row = s.get(TokenRow, token_id)
            if row is not None and row.revoked_at is None:
                row.revoked_at = time.time()
        self.refresh_gateway_admins()

    def _sync_from_store(self) -> None:
        """What another server may have changed: admin tokens (every gateway must see a revocation)
        and injected outages."""
        self.refresh_gateway_admins()
        changes = self.scheduler.outage_changes()
        with self.store.session() as s:
            outages = {row.name: bool(row.outage) for row in s.scalars(select(CloudRow))}
        self.scheduler.sync_outages(outages, changes)
        self._share_load()

    def _share_load(self) -> None:
        """A server that does not lead writes what its gateway (and the gateway processes reporting
        to it) sees into the store; the leader reads the others', so that its autoscaler counts the
        traffic of every server, and wakes a deployment whose requests wait at another."""
        now = time.time()
        if self.leads():
            with self.store.session() as s:
                rows = s.scalars(select(GatewayLoadRow).where(GatewayLoadRow.server != self.server_id,
                                                              GatewayLoadRow.reported_at > now - LOAD_STALE_S)).all()
            peers: dict[str, tuple[int, int, float]] = {}
            for row in rows:
                peers[row.deployment] = add_loads(peers.get(row.deployment, (0, 0, 0.0)),
                                                  (row.in_flight, row.queued, row.last_request))
            self.peer_loads = peers
            if any(q for _, q, _ in peers.values()):
                self.controller.nudge()
            return
        self.peer_loads = {}
        seen = {name: self._load_here(name) for name in (r.deployment for r in self.table.routes())}
        with self.store.session() as s:
            s.execute(delete(GatewayLoadRow).where(GatewayLoadRow.server == self.server_id))
            rows = [{"server": self.server_id, "deployment": name, "in_flight": n, "queued": q, "last_request": last,
                     "reported_at": now} for name, (n, q, last) in seen.items() if last]
            if rows:
                s.execute(insert(GatewayLoadRow), rows)

    def observed_latency(self) -> dict[str, float]:
        """Mean gateway-measured latency per cloud, over the replicas serving now."""
        return self._mean_per_cloud(lambda e: e.latency_ewma_ms)

    def _mean_per_cloud(self, measure: Callable[[Endpoint], float | None]) -> dict[str, float]:
        """The mean of ``measure`` over the endpoints of each cloud that have one."""
        samples: dict[str, list[float]] = {}
        for route in self.table.routes():
            for e in route.endpoints:
                if (value := measure(e)) is not None:
                    samples.setdefault(e.cloud, []).append(value)
        return {cloud: sum(v) / len(v) for cloud, v in samples.items()}

    def load(self, deployment: str) -> tuple[int, int, float]:
        """The autoscaler's signal: in flight and held at every gateway (this server's, the gateway
        processes that report to it, the other servers'), and when the last request reached any."""
        return add_loads(self._load_here(deployment), self.peer_loads.get(deployment, (0, 0, 0.0)))

    def _load_here(self, deployment: str) -> tuple[int, int, float]:
        return add_loads(self.gateway.load(deployment), self.loadboard.total(deployment))

    def observed_failure_rate(self) -> dict[str, float]:
        """Mean share of failed requests per cloud (502, 503 or 504 answers, refused or broken
        connections), over the replicas serving now, as the gateway saw them."""
        return self._mean_per_cloud(lambda e: e.error_ewma)

    def table_version(self) -> str:
        return f"{self.epoch}:{self.table.version}"

    def leads(self) -> bool:
        """Whether this server runs the controllers (and so publishes the freshest table)."""
        return self.leadership.leading

    def require_leader(self, what: str) -> None:
        """Refuse an action only the controllers' server may carry out, pointing at that server."""
        if not self.leads():
            leader = self.leadership.leader_url()
            raise ConflictError(f"this server does not run the controllers, so it cannot {what}",
                                hint=f"ask the leading server{f' at {leader}' if leader else ''}")

    def start(self) -> None:
        """Lead (run the loops, settled once) or follow (route from the store) before serving."""
        self.leadership.start()
        self.telemetry.start()

    def stop(self) -> None:
        self.telemetry.stop()
        self.leadership.stop()
        for backend in self.clouds.values():
            backend.close()

    def refresh_gateway_admins(self) -> None:
        """The tokens that may call any deployment through the gateway: live, unscoped admin tokens
        of server admins. Replaced whole, so the gateway sees a revocation at once."""
        with self.store.session() as s:
            admins = {u.name for u in s.scalars(select(UserRow).where(UserRow.admin.is_(True))).all()}
            live = {t.token_hash: t.expires_at for t in s.scalars(select(TokenRow).where(
                TokenRow.revoked_at.is_(None), TokenRow.project.is_(None), TokenRow.role == "admin")).all()
                if t.user in admins}
        if live != self.gateway.admin_token_hashes:
            self.gateway.admin_token_hashes = live  # one assignment: the gateway never sees a half-built map
            self.table.touch()  # gateway processes follow the admin tokens too

    def bootstrap_admin_token(self) -> str | None:
        """On the first start, create the admin token and return it (the only time it is seen)."""
        with self.store.session() as s:
            if s.scalars(select(TokenRow).limit(1)).first() is not None:
                return None
            token = new_token("fma")
            s.add(TokenRow(name="admin", token_hash=hash_token(token), role="admin", user="admin"))
            self.store.record(s, "token", "admin", "", "created", "first start")
        self.refresh_gateway_admins()
        return token


def create_app(platform: Platform) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(platform.start)
        streams = StreamHub.of(app)  # the event streams' one poller: it runs while a stream is open
        yield
        await streams.close()
        await anyio.to_thread.run_sync(platform.stop)
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
    install_storage_error_handlers(app)  # a full or read-only disk: the cause and the fix, not a bare 500

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # e.g. a body that is not JSON: Fermion's error shape, not FastAPI's {"detail": ...}
        return error_response(exc.status_code, str(exc.detail), "BadRequest" if exc.status_code == 400 else "HTTPError")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, object]:
        return {"status": "ok", "version": __version__, "leader": platform.leads()}

    @app.get("/metrics", include_in_schema=False)
    def metrics(me: Principal = Depends(require_token)) -> Response:
        me.require_admin()
        return Response(generate_latest(platform.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False, response_model=None, dependencies=[Depends(require_token)])
    def openapi() -> dict:
        return app.openapi()

    app.include_router(router)
    app.include_router(agents_router)
    app.include_router(jobs_router)
    app.include_router(datasets_router)
    app.include_router(checkpoints_router)
    app.include_router(attempt_datasets_router)
    app.include_router(attempt_output_router)
    app.include_router(attempt_metrics_router)
    app.include_router(attempt_model_router)
    app.include_router(replica_model_router)
    app.include_router(code_router)
    app.include_router(stores_router)
    app.include_router(attempt_code_router)
    app.include_router(secrets_router)
    app.include_router(audit_router)
    app.include_router(access_router)
    app.include_router(gateway_feed_router)
    app.include_router(pipelines_router)
    app.include_router(ui_router)
    app.include_router(ui_api_router)
    return app


def allow_every_method(app: FastAPI):  # noqa: ANN201 - an ASGI callable
    """Starlette answers 405 with the methods of the first route that matches the path only; this
    answers with all of them, in Fermion's error shape."""

    async def wrapped(scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            return await app(scope, receive, send)
        refused = False

        async def send_or_replace(message) -> None:  # noqa: ANN001
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] == 405:
                refused = True
                methods = sorted({m for r in app.routes if isinstance(r, APIRoute) and r.matches(scope)[0] != Match.NONE
                                  for m in r.methods})
                response = error_response(405, f"{scope['method']} is not allowed here; use {', '.join(methods)}",
                                          "MethodNotAllowed")
                response.headers["allow"] = ", ".join(methods)
                await response(scope, receive, send)
            elif not refused:
                await send(message)

        await app(scope, receive, send_or_replace)

    return wrapped


def authenticate_uploads(app, platform: Platform):  # noqa: ANN001, ANN201 - ASGI callables
    """FastAPI reads a multipart body before any dependency runs: check the token of an upload
    first, so an anonymous caller cannot make the server spool hundreds of MB to disk."""

    async def wrapped(scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT") and is_upload(scope["path"]):
            auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
            if not (attempt_token_valid(platform, auth) or await anyio.to_thread.run_sync(live_token, platform.store, auth)):
                response = error_response(401, "missing, invalid, expired or revoked token", "AuthError")
                response.headers["connection"] = "close"
                return await response(scope, receive, send)
        await app(scope, receive, send)

    return wrapped


def create_asgi(platform: Platform):  # noqa: ANN201 - an ASGI callable
    """The API app, audited, with the gateway in front of it (gateway paths never reach FastAPI)."""
    app = audit_requests(allow_every_method(create_app(platform)), platform.store)
    return platform.gateway.wrap(authenticate_uploads(limit_bodies(app), platform))
