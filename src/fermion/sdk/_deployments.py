"""Deployments and clouds through the SDK: deploy, list, and one deployment's verbs."""

from __future__ import annotations

import inspect
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConflictError, NotFoundError, TimedOut, UserInputError
from ._http import Transport
from ._results import Cloud, Deployment, Event, ModelVersion, Replica

if TYPE_CHECKING:
    from ._optimization import Optimization

MODEL_REF = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}:[0-9]{1,9}$")
CLASSIFIER = Path(__file__).resolve().parents[1] / "photons" / "classifier" / "photon.py"


def photon_ref(photon: object) -> str:
    """'FILE.py:Class' (or a .photon archive) for a photon given as a reference, a path or its class."""
    if isinstance(photon, str | Path):
        return str(photon)
    if inspect.isclass(photon):
        source = inspect.getsourcefile(photon)
        if source is None:
            raise UserInputError(f"cannot find the file that defines {photon.__name__}",
                                 hint="define the photon in a .py file, or pass 'FILE.py:Class'")
        return f"{source}:{photon.__qualname__}"
    raise UserInputError(f"cannot deploy a {type(photon).__name__}",
                         hint="pass a Photon class, 'FILE.py:Class', a .photon archive, or a model NAME:VERSION")


class DeploymentHandle:
    """One deployment by name: its state and the verbs that change it."""

    def __init__(self, http: Transport, name: str) -> None:
        self._http, self.name = http, name

    def __repr__(self) -> str:
        return f"DeploymentHandle({self.name!r})"

    def get(self) -> Deployment:
        """The deployment now, with its replicas."""
        return Deployment.model_validate(self._http.get(f"/deployments/{self.name}"))

    def events(self, limit: int = 50) -> list[Event]:
        return [Event.model_validate(e) for e in self._http.get("/events", object_id=self.name, limit=limit)]

    def logs(self, tail: int = 100) -> dict[str, str]:
        """The last ``tail`` lines of each live replica's log, by replica id (secrets masked)."""
        return self._http.get(f"/deployments/{self.name}/logs", tail=tail)

    def scale(self, replicas: int) -> Deployment:
        return Deployment.model_validate(
            self._http.request("POST", f"/deployments/{self.name}/scale", json={"replicas": replicas}))

    def migrate(self, clouds: list[str], *, wait: bool = True, timeout: float = 300) -> Optimization:
        """Move the live deployment onto ``clouds`` (they become its allowed clouds): one replica at
        a time, each new one READY before an old one drains, so no request fails. With ``wait``,
        returns once every replica runs there."""
        from ._optimization import Optimization

        if isinstance(clouds, str):
            clouds = [clouds]
        out = Optimization.model_validate(
            self._http.request("POST", f"/deployments/{self.name}/migrate", json={"clouds": list(clouds)}))
        if wait and out.applied and out.target:
            target, since = out.target, time.time() - 1

            def arrived(d: Deployment) -> bool:
                if d.placed == target and d.status == "READY" and d.target is None and \
                        len(d.replica_list) == d.replicas:
                    return True
                if d.target is None:  # the move is over: given up, or its last replicas are settling
                    given_up = next((e.reason for e in reversed(self.events(20))
                                     if e.at >= since and e.reason.startswith("abandoned")), None)
                    if given_up:
                        raise ConflictError(f"deployment {self.name} did not reach {target}: {given_up}",
                                            hint=f"see `fermion deployment status {self.name}`, then migrate again")
                return False

            self.wait(arrived, timeout, f"to run on {target}")
        return out

    def optimize(self, alpha: float = 1.0, beta: float = 1.0, *, apply: bool = False,
                 min_saving: float = 0.1) -> Optimization:
        """The best placement over the healthy clouds by ``alpha * performance + beta * cost``, against
        now, with its explanation (``.explanation``); with ``apply``, move there when it saves
        ``min_saving`` of the cost per hour."""
        from ._optimization import Optimization

        body: dict[str, Any] = {"apply": apply, "min_saving": min_saving}
        if (alpha, beta) != (1.0, 1.0):  # a server from before the weights takes the defaults only
            body.update(alpha=float(alpha), beta=float(beta))
        return Optimization.model_validate(self._http.request("POST", f"/deployments/{self.name}/rebalance", json=body))

    def promote(self) -> Deployment:
        """End the canary: it becomes the deployment's version."""
        return Deployment.model_validate(self._http.request("POST", f"/deployments/{self.name}/promote"))

    def rollback(self) -> Deployment:
        """End the canary: the running version takes all the traffic again."""
        return Deployment.model_validate(self._http.request("POST", f"/deployments/{self.name}/rollback"))

    def delete(self) -> None:
        """Drain every replica and remove the deployment."""
        self._http.request("DELETE", f"/deployments/{self.name}")

    def wait(self, until: Callable[[Deployment], bool] | None = None, timeout: float = 300,
             what: str = "to settle") -> Deployment:
        """Poll until ``until(deployment)`` (default: settled: READY, IDLE or FAILED); raises
        TimedOut past ``timeout`` seconds."""
        until = until or (lambda d: d.settled)
        deadline = time.monotonic() + timeout
        while True:
            d = self.get()
            if until(d):
                return d
            if time.monotonic() > deadline:
                raise TimedOut(f"deployment {self.name} did not come {what} within {timeout:g}s: "
                               f"{d.status} ({d.status_reason})", hint=f"see `fermion deployment status {self.name}`")
            time.sleep(0.5)


class Deployments:
    """``conn.deployments()`` lists them; ``conn.deployments[name]`` is one."""

    def __init__(self, http: Transport) -> None:
        self._http = http

    def __call__(self) -> list[Deployment]:
        return [Deployment.model_validate(d) for d in self._http.get("/deployments")]

    def __getitem__(self, name: str) -> DeploymentHandle:
        return DeploymentHandle(self._http, name)

    def __iter__(self):  # noqa: ANN204
        return iter(self())

    def replicas(self, deployment: str | None = None) -> list[Replica]:
        """Live replicas (of one deployment, or of every one you can see)."""
        return [Replica.model_validate(r) for r in self._http.get("/replicas", deployment=deployment)]

    def deploy(self, photon: object = None, *, name: str, model: str | ModelVersion | None = None,
               replicas: int = 1, clouds: list[str] | None = None, cpus: float | None = None,
               memory_gb: float | None = None, env: dict[str, str] | None = None, public: bool = False,
               project: str | None = None, rebuild: bool = False, rate_limit: float | None = None, burst: int = 0,
               autoscale: dict[str, Any] | None = None, canary: dict[str, Any] | None = None,
               spot: dict[str, Any] | None = None, placement: dict[str, Any] | None = None,
               egress: bool = False, wait: bool = True, timeout: float = 300) -> Deployment:
        """Build (if needed), upload and deploy; a new version of a running deployment rolls out with
        no downtime (or, with ``canary``, beside it: the running version then keeps its replicas,
        clouds, access, autoscaling, spot, placement and rate limit, and those arguments are not
        applied; ``canary["replicas"]`` is the canary's count). ``photon``: a Photon class, 'FILE.py:Class', a
        .photon archive, or a registry model (a ModelVersion or 'NAME:VERSION', served by the
        classifier photon). The answer's ``token`` (shown once) calls a private deployment. ``egress``:
        its replicas may reach the network (on a local cloud they then share the machine's)."""
        if isinstance(photon, ModelVersion) or (isinstance(photon, str) and MODEL_REF.match(photon)
                                                and not Path(photon).exists()):
            model, photon = photon, None  # type: ignore[assignment]
        env = dict(env or {})
        if model is not None:
            ref = model.ref if isinstance(model, ModelVersion) else model
            version = ModelVersion.model_validate(self._http.get(f"/models/{ref}"))
            if version.artifact_uri.startswith("store:"):  # each replica fetches it from the stores
                env["FERMION_MODEL"] = version.ref
            else:  # registered before models went to the stores: its folder, shown read-only
                env["FERMION_MODEL_DIR"] = version.artifact_uri
            photon = photon or f"{CLASSIFIER}:Classifier"
        if photon is None:
            raise UserInputError("give a photon to deploy, or a model NAME:VERSION")
        spec: dict[str, Any] = {"photon": self.upload(photon, rebuild=rebuild), "replicas": replicas,
                                "clouds": list(clouds or []),
                                "env": env, "public": public}
        optional = {"project": project, "autoscale": autoscale, "canary": canary, "spot": spot, "placement": placement}
        spec.update({k: v for k, v in optional.items() if v is not None})
        if rate_limit is not None:
            spec["rate_limit"] = {"requests_per_second": rate_limit, "burst": burst}
        if cpus is not None or memory_gb is not None:
            spec["resources"] = {"cpus": cpus or 1, "memory_gb": memory_gb or 1}
        if egress:
            spec.setdefault("resources", {})["egress"] = True
        out = self.apply(name, spec)
        if wait:
            token = out.token
            try:
                out = self[name].wait(timeout=timeout)
            except TimedOut:
                out = self[name].get()  # not settled yet: the caller sees where it stands
            out.token = token
        return out


    def upload(self, photon: object, *, rebuild: bool = False) -> str:
        """Build (if needed) and upload a photon; its archive's sha256, which a deployment spec names."""
        from ..photon.runtime import build_archive

        ref = photon_ref(photon)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(ref) if ref.endswith(".photon") else Path(tmp) / "upload.photon"
            if not ref.endswith(".photon"):
                build_archive(ref, archive, cache=not rebuild)
            try:
                f = archive.open("rb")
            except FileNotFoundError:
                raise UserInputError(f"no photon archive at {archive}") from None
            with f:
                return self._http.request("POST", "/photons", files={"file": (archive.name, f, "application/zip")})["sha256"]

    def apply(self, name: str, spec: dict[str, Any]) -> Deployment:
        """Create or update a deployment from its spec (the fields of PUT /api/v1/deployments/NAME, with
        an uploaded photon's sha256); returns at once."""
        return Deployment.model_validate(self._http.request("PUT", f"/deployments/{name}", json=spec))


class Clouds:
    """``conn.clouds()`` lists them, with health and capacity."""

    def __init__(self, http: Transport) -> None:
        self._http = http

    def __call__(self) -> list[Cloud]:
        return [Cloud.model_validate(c) for c in self._http.get("/clouds")]

    def get(self, name: str) -> Cloud:
        cloud = next((c for c in self() if c.name == name), None)
        if cloud is None:
            raise NotFoundError(f"no cloud named {name!r}", hint="see `fermion cloud list`")
        return cloud

    def fail(self, name: str) -> dict[str, Any]:
        """Inject an outage: kill every replica and job attempt on it and refuse new ones."""
        return self._http.request("POST", f"/clouds/{name}/fail")

    def recover(self, name: str) -> dict[str, Any]:
        """End an injected outage."""
        return self._http.request("POST", f"/clouds/{name}/recover")

    def agent(self, name: str) -> dict[str, Any]:
        """A new token for agent cloud ``name``'s agent (earlier ones stop working) and the command
        that starts the agent inside that cloud: ``{"cloud", "token", "command"}``. Admins only."""
        return self._http.request("POST", f"/clouds/{name}/agent")

    def gc(self) -> dict[str, Any]:
        """Collect garbage in every reachable store: ended jobs' checkpoints, then unnamed chunks."""
        import httpx

        return self._http.request("POST", "/stores/gc", timeout=httpx.Timeout(60, read=None))
