"""The model registry: named, numbered versions with their artifact, metrics and lineage."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..errors import ConflictError, NotFoundError, UserInputError, shorten
from ..store import DEFAULT_PROJECT, DeploymentRow, JobRow, ModelVersionRow, Store
from ..types import NAME_PATTERN

STAGES = ("none", "staging", "production", "archived")
JOB_ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")
MAX_VERSION = 2**31 - 1  # versions are stored as 32-bit integers (SQLite/PostgreSQL INTEGER)


def next_version(s: Session, name: str) -> int:
    if not re.match(NAME_PATTERN, name):  # it names a folder or a store key: never a path
        raise UserInputError(f"invalid model name {shorten(name)!r}", hint="use lowercase letters, digits and '-'")
    return (s.scalar(select(func.max(ModelVersionRow.version)).where(ModelVersionRow.name == name)) or 0) + 1


def register(s: Session, store: Store, home: Path, name: str, artifact: Path, metrics: dict[str, Any],
             lineage: dict[str, Any], project: str = DEFAULT_PROJECT) -> ModelVersionRow:
    """Copy ``artifact`` into the server's artifact folder as the next version of ``name`` (a job
    made before outputs went through the stores)."""
    version = next_version(s, name)
    dest = home / "artifacts" / name / f"v{version}"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(artifact, dest, symlinks=True)  # a link the job left stays a link, never the file it points at
    return record(s, store, name, version, str(dest), metrics, lineage, project)


def record(s: Session, store: Store, name: str, version: int, artifact_uri: str, metrics: dict[str, Any],
           lineage: dict[str, Any], project: str = DEFAULT_PROJECT) -> ModelVersionRow:
    """Register version ``version`` of ``name``, whose artifact is at ``artifact_uri`` (a folder, or
    store:DIGEST for one kept in the clouds' stores)."""
    row = ModelVersionRow(name=name, version=version, project=project, artifact_uri=artifact_uri, metrics=metrics,
                          lineage=lineage, created_at=time.time())
    s.add(row)
    store.record(s, "model", f"{name}:{version}", "", "none", f"registered from {lineage.get('job', 'a job')}")
    return row


def parse_ref(ref: str) -> tuple[str, int | None]:
    """NAME or NAME:VERSION (also NAME:vVERSION), VERSION in 1..2**31-1."""
    name, _, ver = ref.partition(":")
    if not name:
        raise UserInputError(f"invalid model reference {shorten(ref)!r}", hint="use NAME or NAME:VERSION")
    if not ver:
        return name, None
    digits = re.fullmatch(r"v?([0-9]{1,10})", ver)
    version = int(digits.group(1)) if digits else 0
    if not 1 <= version <= MAX_VERSION:
        raise UserInputError(f"invalid model version in {shorten(ref)!r}",
                             hint=f"versions are whole numbers from 1 to {MAX_VERSION}: NAME:3")
    return name, version


def get_version(s: Session, ref: str) -> ModelVersionRow:
    """NAME:VERSION, or NAME for its production version, else its latest."""
    name, version = parse_ref(ref)
    q = select(ModelVersionRow).where(ModelVersionRow.name == name)
    if version is not None:
        row = s.get(ModelVersionRow, (name, version))
    else:
        rows = s.scalars(q.order_by(ModelVersionRow.version.desc())).all()
        row = next((r for r in rows if r.stage == "production"), rows[0] if rows else None)
    if row is None:
        raise NotFoundError(f"no model version {shorten(ref)!r}", hint="see `fermion model list`")
    return row


def promote(s: Session, store: Store, ref: str, stage: str) -> ModelVersionRow:
    if stage not in STAGES:
        raise UserInputError(f"unknown stage {shorten(stage)!r}", hint=f"one of: {', '.join(STAGES)}")
    row = get_version(s, ref)
    if stage == "production":  # one production version per model: the previous one is archived
        for other in s.scalars(select(ModelVersionRow).where(ModelVersionRow.name == row.name,
                                                              ModelVersionRow.stage == "production")).all():
            if other.version != row.version:
                store.record(s, "model", f"{other.name}:{other.version}", other.stage, "archived", "superseded")
                other.stage = "archived"
    store.record(s, "model", f"{row.name}:{row.version}", row.stage, stage, "promoted")
    row.stage = stage
    return row


def served_by(s: Session, row: ModelVersionRow, env_of: Callable[[DeploymentRow], dict[str, str]]) -> list[str]:
    """The deployments that serve this version (``env_of`` gives a deployment's opened env): by its
    folder, or by a reference (NAME, NAME:3) that names this version now."""

    def serves(d: DeploymentRow) -> bool:
        env = env_of(d)
        if env.get("FERMION_MODEL_DIR") == row.artifact_uri:
            return True
        try:
            return bool(env.get("FERMION_MODEL")) and get_version(s, env["FERMION_MODEL"]) is row
        except (NotFoundError, UserInputError):
            return False

    return [d.name for d in s.scalars(select(DeploymentRow)).all() if d.status != "DELETING" and serves(d)]


def delete(s: Session, store: Store, ref: str, env_of: Callable[[DeploymentRow], dict[str, str]]) -> None:
    """Delete a version, unless a deployment serves it (``env_of`` gives a deployment's opened env)
    or an unfinished fine-tune starts from it."""
    row = get_version(s, ref)
    users = served_by(s, row, env_of)
    ref = f"{row.name}:{row.version}"
    users += [f"job {j.name}" for j in s.scalars(select(JobRow).where(JobRow.status.not_in(JOB_ENDED))).all()
              if (j.spec.get("base_model") or {}).get("ref") == ref]
    if users:
        raise ConflictError(f"model {row.name}:{row.version} is served by {', '.join(users)}",
                            hint="delete or redeploy those deployments (and let those jobs end) first")
    if not row.artifact_uri.startswith("store:"):  # one in the stores: the API takes its manifest out of them
        shutil.rmtree(row.artifact_uri, ignore_errors=True)
    store.record(s, "model", f"{row.name}:{row.version}", row.stage, "deleted", "deleted by user")
    s.delete(row)
