"""The tables: every long-lived object is a row; every change of state is an Event row."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DEFAULT_PROJECT = "default"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Base(DeclarativeBase):
    pass


class PhotonRow(Base):
    __tablename__ = "photons"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    archive_path: Mapped[str] = mapped_column(Text)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class CloudRow(Base):
    __tablename__ = "clouds"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    health: Mapped[str] = mapped_column(String(20), default="healthy")  # healthy | unhealthy
    health_reason: Mapped[str] = mapped_column(Text, default="")
    outage: Mapped[bool] = mapped_column(default=False)  # injected by `fermion cloud fail`; survives a restart
    # kind agent: the serial of the cloud's live agent token (0: none issued; a new one voids the old)
    agent_serial: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class DeploymentRow(Base):
    __tablename__ = "deployments"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    photon_sha256: Mapped[str] = mapped_column(ForeignKey("photons.sha256"))
    generation: Mapped[int] = mapped_column(Integer, default=1)
    replicas: Mapped[int] = mapped_column(Integer, default=1)
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    clouds: Mapped[list[str]] = mapped_column(JSON, default=list)  # allowed; empty = any
    env: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    public: Mapped[bool] = mapped_column(default=False)
    idempotent: Mapped[bool] = mapped_column(default=True)
    rate_limit: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    project: Mapped[str] = mapped_column(String(100), default=DEFAULT_PROJECT, index=True)
    token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="DEPLOYING")  # DEPLOYING|READY|DEGRADED|IDLE|FAILED
    status_reason: Mapped[str] = mapped_column(Text, default="")
    crash_count: Mapped[int] = mapped_column(Integer, default=0)  # consecutive, reset on READY
    last_error: Mapped[str] = mapped_column(Text, default="")
    next_start_at: Mapped[float] = mapped_column(Float, default=0.0)
    target: Mapped[dict[str, int] | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # replicas per cloud of a move
    # the autoscaler's policy (min, max, target_ongoing_requests, delays, queue); None: a fixed count
    autoscale: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    # a canary under way: its generation, spec (photon, resources, sealed env), traffic share and judge
    canary: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    # spot policy: share of the replicas on spot, fallback ("on_demand" | "none"), max_reclaim_share
    spot: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    # re-optimization over time: reoptimize_every_s, min_saving
    placement: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)
    lease_owner: Mapped[str | None] = mapped_column(String(40), nullable=True)  # the controller reconciling it
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)


class ReplicaRow(Base):
    __tablename__ = "replicas"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("r"))
    deployment: Mapped[str] = mapped_column(ForeignKey("deployments.name"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    photon_sha256: Mapped[str] = mapped_column(String(64))
    cloud: Mapped[str | None] = mapped_column(String(100), nullable=True)
    state: Mapped[str] = mapped_column(String(20), default="PENDING", index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # the backend's, opaque
    url: Mapped[str | None] = mapped_column(Text, nullable=True)  # where the backend says it serves
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    failed_probes: Mapped[int] = mapped_column(Integer, default=0)
    auth_secret: Mapped[str | None] = mapped_column(String(100), nullable=True)  # the gateway's key to this replica
    spot: Mapped[bool] = mapped_column(default=False)  # on spot capacity (a PENDING one: it must go on spot)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    state_since: Mapped[float] = mapped_column(Float, default=time.time)


class GatewayLoadRow(Base):
    """What the gateway of a server that does not lead (and the gateway processes reporting to
    it) saw of one deployment's load lately: the leader's autoscaler counts it."""

    __tablename__ = "gateway_loads"
    server: Mapped[str] = mapped_column(String(40), primary_key=True)
    deployment: Mapped[str] = mapped_column(String(100), primary_key=True)
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    queued: Mapped[int] = mapped_column(Integer, default=0)
    last_request: Mapped[float] = mapped_column(Float, default=0.0)  # wall time
    reported_at: Mapped[float] = mapped_column(Float, default=time.time)


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    kind: Mapped[str] = mapped_column(String(20))  # deployment | replica | cloud | token
    object_id: Mapped[str] = mapped_column(String(100), index=True)
    old: Mapped[str] = mapped_column(String(40), default="")
    new: Mapped[str] = mapped_column(String(40), default="")
    reason: Mapped[str] = mapped_column(Text, default="")


class TokenRow(Base):
    """A bearer token of a user: scoped to one project (or, unscoped, to all of the user's), with a
    role that caps the user's own; it may expire and be revoked. Only its sha256 is stored."""

    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("t"))
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(20), default="admin")  # admin | editor | viewer
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    user: Mapped[str] = mapped_column(String(100), default="admin")
    project: Mapped[str | None] = mapped_column(String(100), nullable=True)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class UserRow(Base):
    """Someone who holds tokens. A server admin may do anything; others act through memberships."""

    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class ProjectRow(Base):
    """Every deployment, job, model and secret belongs to one project."""

    __tablename__ = "projects"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class MembershipRow(Base):
    """A user's role in a project: admin, editor or viewer."""

    __tablename__ = "memberships"
    user: Mapped[str] = mapped_column(ForeignKey("users.name"), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), primary_key=True)
    role: Mapped[str] = mapped_column(String(20))


class JobRow(Base):
    __tablename__ = "jobs"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), default="command")  # command | finetune
    command: Mapped[list[str]] = mapped_column(JSON)
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    clouds: Mapped[list[str]] = mapped_column(JSON, default=list)
    env: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    workers: Mapped[int] = mapped_column(Integer, default=1)
    spot: Mapped[bool] = mapped_column(default=False)
    max_restarts: Mapped[int] = mapped_column(Integer, default=2)
    status: Mapped[str] = mapped_column(String(20), default="PENDING")  # PENDING|RUNNING|SUCCEEDED|FAILED|CANCELLED
    reason: Mapped[str] = mapped_column(Text, default="")
    restarts: Mapped[int] = mapped_column(Integer, default=0)  # attempts that failed by the job's own error
    next_start_at: Mapped[float] = mapped_column(Float, default=0.0)
    # a server folder mounted into every attempt, for jobs made before checkpoints went through the stores
    checkpoint_dir: Mapped[str] = mapped_column(Text, default="")
    output_dir: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # e.g. the fine-tune config
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)
    project: Mapped[str] = mapped_column(String(100), default=DEFAULT_PROJECT, index=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(40), nullable=True)
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)


class AttemptRow(Base):
    __tablename__ = "attempts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("a"))
    job: Mapped[str] = mapped_column(ForeignKey("jobs.name"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    cloud: Mapped[str] = mapped_column(String(100))
    # STARTING (intent written, start under way) → RUNNING → SUCCEEDED | FAILED | PREEMPTED | CANCELLED
    state: Mapped[str] = mapped_column(String(20), default="STARTING")
    reason: Mapped[str] = mapped_column(Text, default="")
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # the backend's, opaque
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    spot: Mapped[bool] = mapped_column(default=False)
    started_at: Mapped[float] = mapped_column(Float, default=time.time)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    artifact_uri: Mapped[str] = mapped_column(Text)
    stage: Mapped[str] = mapped_column(String(20), default="none")  # none | staging | production | archived
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    project: Mapped[str] = mapped_column(String(100), default=DEFAULT_PROJECT, index=True)


class DatasetRow(Base):
    """A named dataset. Its versions live in the clouds' stores; an encrypted one's key is sealed
    here by the server's master key and never leaves the server."""

    __tablename__ = "datasets"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    project: Mapped[str] = mapped_column(String(100), default=DEFAULT_PROJECT, index=True)
    home_cloud: Mapped[str] = mapped_column(String(100))  # where pushes land unless told otherwise
    encrypted: Mapped[bool] = mapped_column(default=False)
    key_sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class DatasetVersionRow(Base):
    """One version of a dataset: its manifest's digest, numbered in the order versions were made."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset", "digest"),)
    dataset: Mapped[str] = mapped_column(ForeignKey("datasets.name"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    parent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    files: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    message: Mapped[str] = mapped_column(Text, default="")
    origin: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # how it was made: push, dedup of v2, ...
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class PipelineRow(Base):
    """A pipeline as last registered: its spec (code digests and photon archives resolved), and what
    its triggers have seen (the newest dataset version, the last cron time it fired)."""

    __tablename__ = "pipelines"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    project: Mapped[str] = mapped_column(String(100), default=DEFAULT_PROJECT, index=True)
    owner: Mapped[str] = mapped_column(String(100))  # the user whose rights its runs act with
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    trigger_state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)


class PipelineRunRow(Base):
    """One run of a pipeline, on the spec it had when it started; its steps are StepRunRows."""

    __tablename__ = "pipeline_runs"
    __table_args__ = (UniqueConstraint("pipeline", "number"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pr"))
    pipeline: Mapped[str] = mapped_column(String(100), index=True)
    number: Mapped[int] = mapped_column(Integer)
    project: Mapped[str] = mapped_column(String(100), default=DEFAULT_PROJECT)
    status: Mapped[str] = mapped_column(String(20), default="RUNNING")  # RUNNING|SUCCEEDED|FAILED|CANCELLED
    reason: Mapped[str] = mapped_column(Text, default="")
    trigger: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # step → the cloud the placement chose
    token_sealed: Mapped[str | None] = mapped_column(Text, nullable=True)  # what its steps act with; revoked at the end
    token_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class StepRunRow(Base):
    """One step of a run: PENDING → RUNNING → SUCCEEDED | FAILED; CACHED (an earlier run's outputs,
    for the same inputs), BLOCKED (a step it needs did not succeed), CANCELLED."""

    __tablename__ = "pipeline_steps"
    run_id: Mapped[str] = mapped_column(ForeignKey("pipeline_runs.id"), primary_key=True)
    step: Mapped[str] = mapped_column(String(100), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="PENDING")
    reason: Mapped[str] = mapped_column(Text, default="")
    input_hash: Mapped[str] = mapped_column(String(64), default="", index=True)
    job: Mapped[str] = mapped_column(String(100), default="")  # the job (or deployment) it runs as
    cloud: Mapped[str] = mapped_column(String(100), default="")
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cached_from: Mapped[str] = mapped_column(String(40), default="")
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


TERMINAL_STATES = frozenset({"TERMINATED", "FAILED"})  # a replica's, once it can never serve again
# a replica that serves, or is on its way to or from serving
LIVE_REPLICA_STATES = ("PENDING", "PROVISIONING", "STARTING", "READY", "UNHEALTHY", "DRAINING")
# a job attempt whose workload may run and holds its capacity (a cancelled one drains first)
LIVE_ATTEMPT_STATES = ("STARTING", "RUNNING", "CANCELLING")


class SecretRow(Base):
    """A named secret of a project; only its AES-GCM ciphertext is stored (the key lives outside
    the database). ``secret:NAME`` in an env refers to the secret NAME of the same project."""

    __tablename__ = "project_secrets"
    project: Mapped[str] = mapped_column(String(100), primary_key=True, default=DEFAULT_PROJECT)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)


class AuditRow(Base):
    """One mutating API call, number ``seq`` of the audit chain: ``hash`` chains it to the record
    before it, and ``mac``, under a key the database does not hold, vouches for ``seq`` and ``hash``
    (see fermion.api._audit)."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # 1, 2, 3… without gaps; the unique index is what keeps servers sharing a database from taking
    # one number twice. Nullable only so that a row written by hand can exist: verify refuses it.
    seq: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True, index=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(100), index=True)  # the token's user, "anonymous" or "unknown"
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text, index=True)  # e.g. "deployment/web"
    client: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[int] = mapped_column(Integer)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # the master key the MAC's key derives from; both NULL: a record from before anchoring (0006)
    key_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    mac: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditKeyRow(Base):
    """The audit MAC key of a retired master key, sealed under the current one (``fermion secret
    rotate`` adds it and re-seals the others): records MACed before a rotation still verify."""

    __tablename__ = "audit_keys"
    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    sealed: Mapped[str] = mapped_column(Text)
    retired_at: Mapped[float] = mapped_column(Float, default=time.time)
