"""The @handler decorator and the options it records on a photon method."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..types import HttpMethod

F = TypeVar("F", bound=Callable[..., Any])

HANDLER_ATTR = "__fermion_handler__"


class BatchOptions(BaseModel):
    """Adaptive batching: gather concurrent calls into one call of up to ``max_size`` items,
    waiting at most ``max_wait_ms`` for more. With ``max_latency_ms``, a call that would be
    answered later than that (by the fitted cost of the batches ahead of it) is refused at
    once with 503, which the gateway retries on another replica."""

    model_config = ConfigDict(extra="forbid")
    max_size: int = Field(32, ge=1, le=100_000)
    max_wait_ms: float = Field(5.0, ge=0, le=60_000)
    max_latency_ms: float | None = Field(None, gt=0, le=3_600_000)


class HandlerOptions(BaseModel):
    """What ``@handler`` records about one method."""

    model_config = ConfigDict(extra="forbid")
    name: str
    method: HttpMethod = "POST"
    path: str
    batch: BatchOptions | None = None
    timeout_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> HandlerOptions:
        if self.batch is not None and self.method != "POST":
            raise ValueError("batched handlers must use POST")
        return self


def handler(
    func: F | None = None,
    *,
    method: HttpMethod = "POST",
    path: str | None = None,
    batch: BatchOptions | dict[str, Any] | None = None,
    timeout: float | None = None,
) -> Any:
    """Expose a photon method over HTTP.

    ``@handler`` or ``@handler(method="GET", batch={"max_size": 32, "max_wait_ms": 5}, timeout=10)``.
    A batched handler takes one ``list`` parameter and returns a list of the same length;
    concurrent calls are merged into one call.
    """

    def wrap(f: F) -> F:
        opts = HandlerOptions(
            name=f.__name__,
            method=method.upper(),  # type: ignore[arg-type]
            path=path or f"/{f.__name__}",
            batch=BatchOptions.model_validate(batch) if isinstance(batch, dict) else batch,
            timeout_s=timeout,
        )
        if opts.batch is not None:
            _check_batchable(f)
        setattr(f, HANDLER_ATTR, opts)
        return f

    return wrap(func) if func is not None else wrap


def _check_batchable(f: Callable[..., Any]) -> None:
    params = [p for p in inspect.signature(f).parameters.values() if p.name != "self"]
    if len(params) != 1:
        raise TypeError(f"batched handler {f.__name__!r} must take exactly one list parameter")
    if inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f):
        raise TypeError(f"batched handler {f.__name__!r} cannot stream")


def handler_options(obj: object) -> HandlerOptions | None:
    return getattr(obj, HANDLER_ATTR, None)
