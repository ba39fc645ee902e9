"""``fermion.connect()``: one object for everything a Fermion server does."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ._access import Audit, Identity, Projects, Secrets, Tokens, Users
from ._datasets import Datasets
from ._deployments import Clouds, DeploymentHandle, Deployments
from ._http import Transport, load_credentials
from ._jobs import Jobs, Models, ship_code
from ._progress import ProgressFactory, quiet
from ._results import Code, Event

if TYPE_CHECKING:
    from ._pipelines import Pipelines


class Connection:
    """A Fermion server, as Python: every answer a typed object, every error a Fermion error.

    ``conn.deploy(...)``, ``conn.deployments()``, ``conn.deployment(name).migrate([...])``,
    ``conn.jobs.run(...)``, ``conn.finetune(...)``, ``conn.compress(...)``, ``conn.models()``,
    ``conn.datasets.push(...)``, ``conn.events()``. The CLI is built on it.
    """

    def __init__(self, transport: Transport) -> None:
        self.http = transport
        self.url, self.token = transport.url, transport.token

    def __repr__(self) -> str:
        return f"Connection({self.url!r})"

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- serving -----------------------------------------------------------------------------
    @cached_property
    def deployments(self) -> Deployments:
        return Deployments(self.http)

    def deployment(self, name: str) -> DeploymentHandle:
        """One deployment's verbs: get, scale, migrate, optimize, logs, promote, rollback, delete."""
        return self.deployments[name]

    @property
    def deploy(self):  # noqa: ANN201 - the bound method, with its signature and docs
        return self.deployments.deploy

    @cached_property
    def clouds(self) -> Clouds:
        return Clouds(self.http)

    def events(self, object_id: str | None = None, limit: int = 50) -> list[Event]:
        """Recent state changes (of one object, when named), oldest first."""
        return [Event.model_validate(e) for e in self.http.get("/events", object_id=object_id, limit=limit)]

    # -- jobs and models ---------------------------------------------------------------------
    @cached_property
    def jobs(self) -> Jobs:
        return Jobs(self.http)

    @property
    def finetune(self):  # noqa: ANN201
        return self.jobs.finetune

    @property
    def compress(self):  # noqa: ANN201
        return self.jobs.compress

    @cached_property
    def models(self) -> Models:
        return Models(self.http)

    def ship_code(self, folder: str | Path, project: str | None = None, *, progress: ProgressFactory = quiet) -> Code:
        """Send a folder's sources for jobs to run in (only the chunks the stores lack)."""
        return ship_code(self.http, Path(folder), project, progress=progress)

    @cached_property
    def pipelines(self) -> Pipelines:
        from ._pipelines import Pipelines

        return Pipelines(self.http)

    # -- data --------------------------------------------------------------------------------
    @cached_property
    def datasets(self) -> Datasets:
        return Datasets(self.http)

    # -- access ------------------------------------------------------------------------------
    def whoami(self) -> Identity:
        return Identity.model_validate(self.http.get("/whoami"))

    @cached_property
    def tokens(self) -> Tokens:
        return Tokens(self.http)

    @cached_property
    def users(self) -> Users:
        return Users(self.http)

    @cached_property
    def projects(self) -> Projects:
        return Projects(self.http)

    @cached_property
    def secrets(self) -> Secrets:
        return Secrets(self.http)

    @cached_property
    def audit(self) -> Audit:
        return Audit(self.http)


def connect(url: str | None = None, token: str | None = None, *, timeout: float = 60) -> Connection:
    """Connect to a Fermion server: ``url`` and ``token``, else FERMION_URL and FERMION_TOKEN, else
    what `fermion login` (or `fermion server start`) saved. Raises AuthError when none is known."""
    return Connection(Transport(load_credentials(url, token), timeout=timeout))
