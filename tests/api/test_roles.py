"""The role matrix: every API route, called by every kind of caller, against the server's app in
this process (fermion.testing.in_process_server: the same app, clouds that start nothing).

Callers: a server admin; a project admin, editor and viewer of project "ml"; an editor of another
project; a token scoped down to viewer; anonymous, expired and revoked tokens. Each route declares
the role it needs in "ml" (or that it needs a server admin); a caller below it gets 403, one that
may not see the project gets 404 (names do not leak), and an unauthenticated one 401. A route
missing from POLICY fails the suite, so no route ships without a declared policy."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fermion.photon._package import build_archive
from fermion.testing import InProcessServer, in_process_server
from tests.support import FIXTURE_PHOTONS

ORDER = {"viewer": 0, "editor": 1, "admin": 2}


@dataclass
class Caller:
    name: str
    token: str | None
    ml_role: str | None  # role in project "ml"
    server_admin: bool = False
    valid: bool = True  # False: anonymous, expired or revoked


@dataclass
class Rule:
    method: str
    path: str
    need: str  # "any" (authenticated), "viewer"/"editor"/"admin" in ml, "server" (server admin), "attempt" (a job attempt)
    body: Callable[[], dict] | None = None
    setup: Callable[[httpx.Client], None] | None = None  # recreate what a previous caller consumed
    listing: bool = False  # lists filter instead of refusing: callers without a role get 200


class World:
    """The objects of project ml the routes act on, created by the server admin."""

    def __init__(self, server: InProcessServer, tmp: Path) -> None:
        self.server = server
        self.http = server.http("")  # no token of its own: each call sends its caller's
        archive = tmp / "v.photon"
        build_archive(f"{FIXTURE_PHOTONS}:Versioned", archive)
        self.archive = archive.read_bytes()
        with server.api() as api:
            self.sha = api.post("/photons", files={"file": ("v.photon", self.archive, "application/zip")}).json()["sha256"]

    def admin(self) -> httpx.Client:
        return self.server.api()

    def deployment(self, api: httpx.Client, name: str = "web") -> None:
        for _ in range(100):  # a deleted one is gone once its (zero) replicas are drained
            if api.get(f"/deployments/{name}").status_code == 200:
                return
            r = api.put(f"/deployments/{name}", json={"photon": self.sha, "replicas": 0, "project": "ml", "public": True})
            if r.status_code == 200:
                return
            assert "being deleted" in r.text, r.text
            time.sleep(0.1)
        raise AssertionError(f"deployment {name} could not be recreated")

    def secret(self, api: httpx.Client) -> None:
        assert api.put("/secrets/k", json={"value": "v4lue-123", "project": "ml"}).status_code == 200

    def job(self, api: httpx.Client) -> None:
        if api.get("/jobs/j").status_code == 404:
            assert api.post("/jobs", json={"name": "j", "command": ["sleep", "600"], "project": "ml",
                                           "resources": {"cpus": 0.25, "memory_gb": 0.25}}).status_code == 201

    def dataset(self, api: httpx.Client) -> None:
        """Dataset ds of project ml, with one version of one file, sent the way the CLI sends it."""
        if api.get("/datasets/ds").status_code == 200:
            return
        assert api.post("/datasets", json={"name": "ds", "project": "ml"}).status_code == 201
        data = b"rows of a dataset\n" * 100
        sha = hashlib.sha256(data).hexdigest()
        assert api.put(f"/datasets/ds/chunks/{sha}", content=data).status_code == 201
        self.files = [{"path": "rows.txt", "size": len(data), "sha256": sha, "chunks": [[sha, len(data)]]}]
        assert api.post("/datasets/ds/versions", json={"files": self.files}).status_code == 201
        self.chunk = sha

    PIPELINE = {"name": "pl", "project": "ml", "steps": [{"name": "a", "command": ["true"],
                                                          "resources": {"cpus": 0.25, "memory_gb": 0.25}}]}

    def pipeline(self, api: httpx.Client) -> None:
        """Pipeline pl of project ml, with a run."""
        if api.get("/pipelines/pl").status_code == 404:
            assert api.post("/pipelines", json={"pipeline": self.PIPELINE}).status_code == 201
        if api.get("/pipelines/pl/runs/latest").status_code == 404:
            assert api.post("/pipelines/pl/runs", json={}).status_code == 201

    def model(self) -> None:
        db = self.server.home / "fermion.db"
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT OR IGNORE INTO model_versions (name, version, artifact_uri, stage, metrics, lineage, "
                         "created_at, project) VALUES ('m', 1, '/nonexistent', 'none', '{}', '{}', 0, 'ml')")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, list[Caller]]]:
    tmp = tmp_path_factory.mktemp("roles")
    # outpost: an agent cloud (no agent runs: it takes no workload), whose agent routes the matrix tries
    with in_process_server(tmp / "home", "clouds:\n  - name: alpha\n  - name: outpost\n    kind: agent\n") as server:
        w = World(server, tmp)
        with server.api() as api:
            for project in ("ml", "other"):
                assert api.post("/projects", json={"name": project}).status_code == 201
            tokens: dict[str, str] = {}
            for user, project, role in [("carol", "ml", "admin"), ("alice", "ml", "editor"), ("bob", "ml", "viewer"),
                                        ("dave", "other", "editor")]:
                assert api.post("/users", json={"name": user}).status_code == 201
                assert api.put(f"/projects/{project}/members/{user}", json={"role": role}).status_code == 200
                tokens[user] = api.post("/tokens", json={"name": user, "user": user, "role": "admin"}).json()["token"]
            scoped = api.post("/tokens", json={"name": "ro", "user": "alice", "project": "ml", "role": "viewer"}).json()
            expired = api.post("/tokens", json={"name": "old", "expires_in_days": 1e-5}).json()
            revoked = api.post("/tokens", json={"name": "gone"}).json()
            assert api.delete(f"/tokens/{revoked['id']}").status_code == 200
            w.deployment(api)
            w.secret(api)
            w.job(api)
            w.model()
            w.dataset(api)
            old = {"Authorization": f"Bearer {expired['token']}"}
            server.wait_for(lambda a: a.get("/whoami", headers=old).status_code == 401)  # the short-lived token expired
        callers = [
            Caller("anonymous", None, None, valid=False),
            Caller("expired", expired["token"], None, valid=False),
            Caller("revoked", revoked["token"], None, valid=False),
            Caller("other-project editor", tokens["dave"], None),
            Caller("viewer", tokens["bob"], "viewer"),
            Caller("editor scoped to viewer", scoped["token"], "viewer"),
            Caller("editor", tokens["alice"], "editor"),
            Caller("project admin", tokens["carol"], "admin"),
            Caller("server admin", server.token, "admin", server_admin=True),
        ]
        yield w, callers


def policy(w: World) -> list[Rule]:
    dep = {"photon": "", "replicas": 0, "project": "ml", "public": True}
    return [
        Rule("GET", "/whoami", "any"),
        Rule("GET", "/clouds", "any"),
        Rule("POST", "/clouds/alpha/fail", "server", setup=lambda api: api.post("/clouds/alpha/recover")),
        Rule("POST", "/clouds/alpha/recover", "server"),
        Rule("POST", "/clouds/outpost/agent", "server"),  # issues a new agent token
        # an agent cloud's routes take its agent token, never a user's (the admin's included)
        Rule("GET", "/agent/outpost/config", "attempt"),
        Rule("POST", "/agent/outpost/poll", "attempt", body=lambda: {"agent": "a", "wait": 0}),
        Rule("POST", "/agent/outpost/report", "attempt", body=lambda: {"agent": "a"}),
        Rule("GET", f"/agent/outpost/archive/{'0' * 64}", "attempt"),
        Rule("GET", "/photons", "any", listing=True),
        Rule("POST", "/photons", "editor"),  # editor in any project
        Rule("GET", "/deployments", "viewer", listing=True),
        Rule("PUT", "/deployments/web", "editor", body=lambda: {**dep, "photon": w.sha}, setup=w.deployment),
        Rule("GET", "/deployments/web", "viewer"),
        Rule("POST", "/deployments/web/scale", "editor", body=lambda: {"replicas": 0}),
        Rule("POST", "/deployments/web/rebalance", "editor", body=lambda: {}),
        Rule("POST", "/deployments/web/migrate", "editor", body=lambda: {"clouds": ["alpha"]}),
        Rule("POST", "/deployments/web/promote", "editor"),  # allowed callers get a 409: no canary under way
        Rule("POST", "/deployments/web/rollback", "editor"),
        Rule("GET", "/deployments/web/logs", "viewer"),
        Rule("GET", "/deployments/web/series", "viewer"),
        Rule("DELETE", "/deployments/web", "editor", setup=w.deployment),
        Rule("GET", "/replicas", "viewer", listing=True),
        Rule("GET", "/events", "viewer", listing=True),
        Rule("GET", "/overview", "any"),  # what the token may see: checked in tests/ui
        Rule("GET", "/series", "any"),
        Rule("GET", "/lineage", "any"),
        Rule("GET", "/costs", "any"),
        Rule("POST", "/pipelines/plan", "any", body=lambda: {"pipeline": {"name": "p", "steps": [{"name": "a"}]}}),
        Rule("POST", "/pipelines", "editor", body=lambda: {"pipeline": World.PIPELINE}),
        Rule("GET", "/pipelines", "viewer", listing=True),
        Rule("GET", "/pipelines/pl", "viewer", setup=w.pipeline),
        Rule("POST", "/pipelines/pl/runs", "editor", body=lambda: {}),  # allowed: 201, or 409 while one runs
        Rule("GET", "/pipelines/pl/runs", "viewer"),
        Rule("GET", "/pipelines/pl/runs/latest", "viewer"),
        Rule("GET", "/pipelines/pl/runs/latest/logs", "viewer"),
        Rule("POST", "/pipelines/pl/runs/latest/cancel", "editor"),  # allowed: 200, or 409 once it ended
        Rule("DELETE", "/pipelines/pl", "editor", setup=w.pipeline),  # allowed: 200, or 409 while one runs
        Rule("GET", "/stream?limit_s=0.2", "any"),
        Rule("GET", "/jobs", "viewer", listing=True),
        Rule("POST", "/jobs", "editor", body=lambda: {"name": f"j{time.monotonic_ns()}", "command": ["true"],
                                                       "project": "ml", "resources": {"cpus": 0.25, "memory_gb": 0.25}}),
        Rule("GET", "/jobs/j", "viewer"),
        Rule("GET", "/jobs/j/logs", "viewer"),
        Rule("POST", "/jobs/j/cancel", "editor", setup=w.job),
        Rule("GET", "/models", "viewer", listing=True),
        Rule("GET", "/models/m:1", "viewer"),
        Rule("POST", "/models/m:1/promote", "editor", body=lambda: {"stage": "staging"}),
        Rule("DELETE", "/models/m:1", "editor", setup=lambda api: w.model()),
        Rule("GET", "/datasets", "viewer", listing=True),
        Rule("POST", "/datasets", "editor", body=lambda: {"name": f"d{time.monotonic_ns()}", "project": "ml"}),
        Rule("GET", "/datasets/ds", "viewer"),
        Rule("POST", "/datasets/ds/missing", "editor", body=lambda: {"chunks": {w.chunk: 1800}}),
        Rule("PUT", f"/datasets/ds/chunks/{'0' * 64}", "editor"),  # allowed callers get a 400: no body
        Rule("GET", f"/datasets/ds/chunks/{w.chunk}", "viewer"),
        Rule("POST", "/datasets/ds/versions", "editor", body=lambda: {"files": w.files}),
        Rule("GET", "/datasets/ds/versions/1", "viewer"),
        Rule("GET", "/datasets/ds/diff?a=1", "viewer"),
        Rule("POST", "/datasets/ds/sync", "editor", body=lambda: {"to": "alpha"}),  # allowed: 409, nowhere to copy from
        Rule("POST", "/datasets/ds/verify", "editor", body=lambda: {}),
        Rule("POST", "/datasets/ds/dedup", "editor", body=lambda: {}),
        Rule("DELETE", "/datasets/ds", "editor", setup=w.dataset),
        # a job attempt's own routes: its token is the server's tag of its id, which no user holds
        Rule("POST", "/attempts/self/checkpoints/missing", "attempt", body=lambda: {"chunks": {}}),
        Rule("PUT", f"/attempts/self/checkpoints/chunks/{'0' * 64}", "attempt"),
        Rule("POST", "/attempts/self/checkpoints", "attempt", body=lambda: {"files": []}),
        Rule("GET", "/attempts/self/checkpoints/latest", "attempt"),
        Rule("GET", f"/attempts/self/checkpoints/chunks/{'0' * 64}", "attempt"),
        Rule("GET", "/attempts/self/datasets/ds", "attempt"),
        Rule("GET", f"/attempts/self/datasets/ds/chunks/{'0' * 64}", "attempt"),
        Rule("POST", "/code/missing", "editor", body=lambda: {"project": "ml", "chunks": {w.chunk: 1800}}),
        Rule("PUT", f"/code/chunks/{'0' * 64}?project=ml", "editor"),  # allowed callers get a 400: no body
        Rule("POST", "/code", "editor", body=lambda: {"project": "ml", "files": w.files}),
        Rule("GET", "/attempts/self/code", "attempt"),
        Rule("POST", "/attempts/self/output/missing", "attempt", body=lambda: {"chunks": {}}),
        Rule("PUT", f"/attempts/self/output/chunks/{'0' * 64}", "attempt"),
        Rule("POST", "/attempts/self/output", "attempt", body=lambda: {"files": []}),
        Rule("GET", "/attempts/self/output/latest", "attempt"),
        Rule("GET", f"/attempts/self/output/chunks/{'0' * 64}", "attempt"),
        Rule("POST", "/attempts/self/metrics", "attempt", body=lambda: {"lines": ['{"step": 1}']}),
        Rule("GET", "/attempts/self/model", "attempt"),
        Rule("GET", f"/attempts/self/model/chunks/{'0' * 64}", "attempt"),
        Rule("GET", "/replicas/self/model", "attempt"),  # a replica's own token only: every API token is refused
        Rule("GET", f"/replicas/self/model/chunks/{'0' * 64}", "attempt"),
        Rule("GET", f"/attempts/self/code/chunks/{'0' * 64}", "attempt"),
        Rule("GET", "/secrets", "viewer", listing=True),
        Rule("PUT", "/secrets/k", "editor", body=lambda: {"value": "new-v4lue", "project": "ml"}),
        Rule("DELETE", "/secrets/k?project=ml", "editor", setup=w.secret),
        Rule("POST", "/secrets/rotate", "server"),
        Rule("POST", "/stores/gc", "server"),
        Rule("GET", "/audit", "server"),
        Rule("GET", "/audit/verify", "server"),
        Rule("GET", "/gateway/table", "server"),  # replica secrets: for gateway processes only
        Rule("POST", "/gateway/load", "server", body=lambda: {"gateway": "gw-test", "deployments": {}}),
        Rule("GET", "/tokens", "any"),
        Rule("POST", "/tokens", "viewer", body=lambda: {"name": "t", "project": "ml", "role": "viewer"}),
        Rule("DELETE", "/tokens/{own}", "any"),
        Rule("GET", "/users", "server"),
        Rule("POST", "/users", "server", body=lambda: {"name": f"u{time.monotonic_ns()}"}),
        Rule("DELETE", "/users/{fresh}", "server"),
        Rule("GET", "/projects", "any", listing=True),
        Rule("POST", "/projects", "server", body=lambda: {"name": f"p{time.monotonic_ns()}"}),
        Rule("GET", "/projects/ml", "viewer"),
        Rule("DELETE", "/projects/{fresh}", "server"),
        Rule("PUT", "/projects/ml/members/bob", "admin", body=lambda: {"role": "viewer"}),
        Rule("DELETE", "/projects/ml/members/{fresh}", "admin"),
    ]


def expected(rule: Rule, c: Caller) -> set[int] | None:
    """The statuses a refusal may have, or None when the call must be allowed."""
    if not c.valid or rule.need == "attempt":
        return {401}
    if c.server_admin or rule.need == "any":
        return None
    if rule.need == "server":
        return {403}
    key = (rule.method, rule.path)
    if key == ("POST", "/photons"):  # an editor of any project may upload
        return None if c.name in ("editor", "project admin", "other-project editor") else {403}
    if rule.listing:
        return None  # filtered, not refused
    if c.ml_role is None:
        return {400} if key == ("POST", "/tokens") else {404}  # a token for ml is more than it may grant
    return None if ORDER[c.ml_role] >= ORDER[rule.need] else {403}


def concrete(path: str, w: World, c: Caller, admin: httpx.Client) -> str:
    """Fill a path's placeholders with objects made for this call."""
    if "{own}" in path:
        token = c.token or w.server.token
        mine = w.http.post("/api/v1/tokens", headers={"Authorization": f"Bearer {token}"},
                           json={"name": "mine", "project": "ml" if c.ml_role else None, "role": "viewer"}).json()
        return path.replace("{own}", mine.get("id", "t-none"))
    if "{fresh}" in path:
        name = f"x{time.monotonic_ns()}"
        if path.startswith("/users") or path.startswith("/projects/ml/members"):
            admin.post("/users", json={"name": name})
            if path.startswith("/projects/ml/members"):
                admin.put(f"/projects/ml/members/{name}", json={"role": "viewer"})
        else:
            admin.post("/projects", json={"name": name})
        return path.replace("{fresh}", name)
    return path


def test_every_route_has_a_declared_policy(world: tuple[World, list[Caller]]) -> None:
    w, _ = world
    schema = w.http.get("/openapi.json", headers={"Authorization": f"Bearer {w.server.token}"}).json()
    declared = {(r.method, r.path.split("?")[0]) for r in policy(w)}
    routes = set()
    for path, ops in schema["paths"].items():
        for method in ops:
            routes.add((method.upper(), path.removeprefix("/api/v1")))

    def matches(route: tuple[str, str]) -> bool:
        method, path = route
        parts = path.split("/")
        return any(m == method and len(p.split("/")) == len(parts)
                   and all(a == b or a.startswith("{") or b.startswith("{") for a, b in zip(p.split("/"), parts))
                   for m, p in declared)

    missing = sorted(r for r in routes if not matches(r))
    assert missing == [], f"routes without a role policy: {missing}"


def test_the_role_matrix(world: tuple[World, list[Caller]]) -> None:
    w, callers = world
    failures = []
    with w.admin() as admin:
        for rule in policy(w):
            for c in callers:
                if rule.setup is not None:
                    rule.setup(admin)
                path = concrete(rule.path, w, c, admin)
                headers = {"Authorization": f"Bearer {c.token}"} if c.token else {}
                if (rule.method, rule.path) == ("POST", "/photons"):
                    r = w.http.post("/api/v1/photons", headers=headers, timeout=30,
                                    files={"file": ("v.photon", w.archive, "application/zip")})
                else:
                    r = w.http.request(rule.method, f"/api/v1{path}", headers=headers, timeout=30,
                                       json=rule.body() if rule.body else None)
                refusals = expected(rule, c)
                ok = r.status_code not in (401, 403, 404) if refusals is None else r.status_code in refusals
                if not ok:
                    failures.append(f"{rule.method} {path} as {c.name}: {r.status_code} {r.text[:120]}")
                if rule.listing and r.status_code == 200 and c.ml_role is None and not c.server_admin:
                    assert "ml" not in {x.get("project") for x in r.json() if isinstance(x, dict)}, rule.path
    assert failures == [], "\n".join(failures)


def test_a_revoked_admin_token_stops_working_at_the_gateway(world: tuple[World, list[Caller]]) -> None:
    w, _ = world
    with w.admin() as api:
        api.put("/deployments/priv", json={"photon": w.sha, "replicas": 0, "project": "ml"})
        extra = api.post("/tokens", json={"name": "second-admin", "role": "admin"}).json()
        gateway = "/d/priv/version"
        with_extra = {"Authorization": f"Bearer {extra['token']}"}
        deadline = time.monotonic() + 10
        while (status := w.http.post(gateway, headers=with_extra).status_code) == 404 and time.monotonic() < deadline:
            time.sleep(0.1)  # the route is published on the controller's next pass
        assert status == 503  # let in: no replica yet
        api.delete(f"/tokens/{extra['id']}")
        assert w.http.post(gateway, headers=with_extra).status_code == 401
        assert api.get("/deployments/priv").status_code == 200


def test_the_last_admin_token_cannot_be_revoked(world: tuple[World, list[Caller]]) -> None:
    w, _ = world
    with w.admin() as api:
        mine = [t for t in api.get("/tokens").json() if t["user"] == "admin" and t["role"] == "admin"
                and t["project"] is None and not t["revoked"] and (t["expires_at"] or 2e9) > time.time()]
        for t in mine[1:]:
            api.delete(f"/tokens/{t['id']}")
        r = api.delete(f"/tokens/{mine[0]['id']}")
        assert r.status_code == 409 and "last server admin token" in r.text


def test_secrets_do_not_cross_projects(world: tuple[World, list[Caller]]) -> None:
    w, callers = world
    dave = next(c for c in callers if c.name == "other-project editor")
    headers = {"Authorization": f"Bearer {dave.token}"}
    api = "/api/v1"
    with w.admin() as admin:
        w.secret(admin)  # secret k of project ml
    r = w.http.put(f"{api}/deployments/steal", headers=headers,
                   json={"photon": w.sha, "replicas": 0, "project": "other", "env": {"X": "secret:k"}})
    assert r.status_code == 400 and "does not exist" in r.text
    assert w.http.get(f"{api}/secrets", headers=headers).json() == []
    # the same name may exist in each project, each with its own value
    mine = w.http.put(f"{api}/secrets/k", headers=headers, json={"value": "dave-value", "project": "other"})
    assert mine.status_code == 200
    names = {(s["project"], s["name"]) for s in w.http.get(f"{api}/secrets", headers={
        "Authorization": f"Bearer {w.server.token}"}).json()}
    assert {("ml", "k"), ("other", "k")} <= names
