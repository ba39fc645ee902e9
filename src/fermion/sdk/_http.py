"""Where the Fermion server is, its token, and JSON over HTTP to its /api/v1."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from .._files import write_atomic
from ..client import Client
from ..config import fermion_home
from ..errors import AuthError, TransportError

CREDENTIALS = "cli.json"


def save_credentials(url: str, token: str, home: Path | None = None, ca: str | None = None) -> Path:
    """Write cli.json (mode 0600); ``ca`` is a certificate file to verify an https server with."""
    path = (home or fermion_home()) / CREDENTIALS
    write_atomic(path, json.dumps({"url": url, "token": token, **({"ca": ca} if ca else {})}), 0o600)
    return path


class Credentials(NamedTuple):
    url: str
    token: str
    ca: str | None  # certificate file to verify the server with; None: the default trust store


def load_credentials(url: str | None = None, token: str | None = None) -> Credentials:
    """The server URL, token and CA: the arguments, else FERMION_URL, FERMION_TOKEN and FERMION_CA,
    else what `fermion login` (or `fermion server start`) saved in cli.json."""
    if url is None:
        url, token = os.environ.get("FERMION_URL"), token or os.environ.get("FERMION_TOKEN")
    ca = os.environ.get("FERMION_CA") or None
    path = fermion_home() / CREDENTIALS
    if path.exists():
        saved = json.loads(path.read_text())
        # the saved token and CA belong to the saved server: never sent to another one named here
        if not url or url.rstrip("/") == str(saved.get("url", "")).rstrip("/"):
            ca = ca or saved.get("ca")
            url, token = url or saved.get("url"), token or saved.get("token")
    if url and not token:
        raise AuthError(f"no token for {url}: the saved one belongs to another server (or none is saved)",
                        hint=f"give it (FERMION_TOKEN, or token=), or run `fermion login {url} --token TOKEN`")
    if not url or not token:
        raise AuthError(
            "no Fermion server configured",
            hint="start one with `fermion server start`, or run `fermion login URL --token TOKEN`",
        )
    return Credentials(url.rstrip("/"), token, ca)


class Transport:
    """JSON calls to a server's /api/v1 with a token; errors become Fermion errors."""

    def __init__(self, credentials: Credentials, timeout: float = 60) -> None:
        self.url, self.token, ca = credentials
        verify: ssl.SSLContext | bool = True
        if ca:
            from ..security import ssl_context_from

            verify = ssl_context_from(ca)
        elif self.url.startswith("http://"):
            verify = False  # no TLS on this connection: loading the CA bundle for nothing costs a tenth of a second
        self._http = httpx.Client(base_url=f"{self.url}/api/v1", timeout=timeout, verify=verify,
                                  headers={"Authorization": f"Bearer {self.token}"})

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        Client._raise_for(response)
        return response

    def _unreachable(self, exc: httpx.TransportError) -> TransportError:
        hint = "is `fermion server start` running?"
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            hint = "trust its certificate: `fermion login URL --ca CERT`, or set FERMION_CA"
        return TransportError(f"cannot reach the Fermion server at {self.url}: {exc}", hint=hint)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    def raw(self, method: str, path: str, **kwargs: Any) -> bytes:
        """The body of the answer as bytes (a dataset's chunk, say)."""
        return self._send(method, path, **kwargs).content

    @contextlib.contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[Iterator[str]]:
        """The lines of a streamed answer, as they arrive (no read timeout: a transfer may be long)."""
        try:
            with self._http.stream(method, path, timeout=httpx.Timeout(60, read=None), **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    Client._raise_for(response)
                yield response.iter_lines()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None} or None)
