"""The server's whole app in the test's own process, over clouds whose workloads start instantly:
API behaviour (routes, roles, validation, the controllers' bookkeeping) without a server process to
start, a socket, or a workload process. What needs real processes stays with ``running_server``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from ._instant import InstantBackend

if TYPE_CHECKING:
    from starlette.testclient import TestClient

    from ..api import Platform


class _Through(httpx.BaseTransport):
    """httpx requests through the app's one TestClient (its event loop runs the controllers'
    lifespan; it speaks starlette's own HTTP client library): many clients, one app."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.client.request(request.method, str(request.url), headers=request.headers.multi_items(),
                                     content=request.read())
        return httpx.Response(answer.status_code, headers=answer.headers.multi_items(), content=answer.content,
                              request=request)


URL = "http://testserver"  # where the app is called (a job told to reach the server there never runs)


@dataclass
class InProcessServer:
    """The app of a server whose home is ``home``; ``token`` is its first admin token."""

    home: Path
    token: str
    platform: Platform
    backends: dict[str, InstantBackend]
    client: TestClient = field(repr=False)
    url: str = URL

    def api(self, token: str | None = None) -> httpx.Client:
        """A client of ``/api/v1`` as ``token`` (default: the admin's; ``""``: no token at all)."""
        return self.http(token, base="/api/v1")

    def http(self, token: str | None = None, base: str = "") -> httpx.Client:
        """A client of the whole app (the gateway's ``/d/...`` too), as in ``api``."""
        token = self.token if token is None else token
        return httpx.Client(transport=_Through(self.client), base_url=f"{self.url}{base}",
                            headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=30)

    def wait_for(self, predicate, timeout: float = 30, interval: float = 0.05):  # noqa: ANN001, ANN201
        """Poll ``predicate(api)`` (as the admin) until it returns something truthy."""
        import time

        deadline = time.monotonic() + timeout
        with self.api() as api:
            while not (value := predicate(api)):
                if time.monotonic() > deadline:
                    raise AssertionError(f"condition not met within {timeout}s")
                time.sleep(interval)
            return value


@contextmanager
def in_process_server(home: Path, clouds_yaml: str | None = None) -> Iterator[InProcessServer]:
    """The app of a server with its home at ``home`` and the clouds of ``clouds_yaml`` (default:
    one local cloud), each run by an InstantBackend with the capacity and prices it declares (an
    agent cloud keeps its own backend: it runs nothing until an agent dials in)."""
    from starlette.testclient import TestClient

    from ..api import Platform, create_asgi
    from ..clouds import load_clouds
    from ..store import default_db_url

    home.mkdir(parents=True, exist_ok=True)
    clouds_file = None
    if clouds_yaml is not None:
        clouds_file = home / "clouds.yaml"
        clouds_file.write_text(clouds_yaml)
    configs = load_clouds(clouds_file)
    with ExitStack() as stack:
        backends = {c.name: InstantBackend(c.name, config=c) for c in configs if c.kind != "agent"}
        for backend in backends.values():
            stack.callback(backend.close)
        platform = Platform(home, default_db_url(home), configs, public_url=URL, backends=backends)
        token = platform.bootstrap_admin_token()
        assert token is not None, f"{home} was used before: an in-process server starts on a new home"
        client = stack.enter_context(TestClient(create_asgi(platform), base_url=URL, follow_redirects=False,
                                                client=("127.0.0.1", 50000)))
        yield InProcessServer(home, token, platform, backends, client)
