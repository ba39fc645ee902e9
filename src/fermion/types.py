"""Type aliases shared across Fermion."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

JSON = dict[str, Any] | list[Any] | str | int | float | bool | None
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"  # deployments, jobs, clouds, models, users, projects

# the raw ASGI interface, for the layers in front of FastAPI (gateway, limits, audit, replica auth)
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
HttpMethod = Literal["GET", "POST"]
StreamFormat = Literal["chunked", "sse"]
