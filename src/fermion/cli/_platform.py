"""Talking to a Fermion server from the CLI: where it is, its token, and JSON over HTTP."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from ..client import Client
from ..config import fermion_home
from ..errors import AuthError, TransportError

CREDENTIALS = "cli.json"


def save_credentials(url: str, token: str, home: Path | None = None) -> Path:
    path = (home or fermion_home()) / CREDENTIALS
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token}, f)
    return path


def load_credentials() -> tuple[str, str]:
    url, token = os.environ.get("FERMION_URL"), os.environ.get("FERMION_TOKEN")
    path = fermion_home() / CREDENTIALS
    if path.exists():
        saved = json.loads(path.read_text())
        url, token = url or saved.get("url"), token or saved.get("token")
    if not url or not token:
        raise AuthError(
            "no Fermion server configured",
            hint="start one with `fermion server start`, or run `fermion login URL --token TOKEN`",
        )
    return url.rstrip("/"), token


class Api:
    """JSON calls to /api/v1 with the saved token; errors become Fermion errors."""

    def __init__(self) -> None:
        self.url, self.token = load_credentials()
        self._http = httpx.Client(base_url=f"{self.url}/api/v1", timeout=60,
                                  headers={"Authorization": f"Bearer {self.token}"})

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(f"cannot reach the Fermion server at {self.url}: {exc}",
                                 hint="is `fermion server start` running?") from exc
        Client._raise_for(response)
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)
