"""Type aliases shared across Fermion."""

from __future__ import annotations

from typing import Any, Literal

JSON = dict[str, Any] | list[Any] | str | int | float | bool | None
HttpMethod = Literal["GET", "POST"]
StreamFormat = Literal["chunked", "sse"]
