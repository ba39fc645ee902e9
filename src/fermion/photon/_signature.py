"""Turn a handler's Python signature into request models and FastAPI endpoint parameters."""

from __future__ import annotations

import collections.abc
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import File, Form, Query, UploadFile
from pydantic import BaseModel, ConfigDict, create_model

RequestKind = Literal["json", "query", "multipart", "none"]
ResponseKind = Literal["json", "bytes", "stream"]

_STREAM_ORIGINS = {
    collections.abc.Iterator,
    collections.abc.Iterable,
    collections.abc.Generator,
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
}


@dataclass
class HandlerSignature:
    """How one handler reads its request and writes its response."""

    request_kind: RequestKind
    params: list[inspect.Parameter]  # without self, annotations resolved
    body_model: type[BaseModel] | None
    endpoint_params: list[inspect.Parameter]
    response_kind: ResponseKind
    return_annotation: Any  # for JSON responses: the type; for streams: the item type
    byte_params: frozenset[str]


def analyse(func: Any, *, method: str, model_prefix: str) -> HandlerSignature:
    hints = typing.get_type_hints(func)
    sig = inspect.signature(func)
    params = [
        p.replace(annotation=hints.get(p.name, Any))
        for p in sig.parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    byte_params = frozenset(p.name for p in params if _is_bytes(p.annotation))
    ret = hints.get("return", Any)

    is_stream = inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func)
    if is_stream:
        response_kind: ResponseKind = "stream"
        args = typing.get_args(ret) if typing.get_origin(ret) in _STREAM_ORIGINS else ()
        ret = args[0] if args else Any
    elif _is_bytes(ret):
        response_kind = "bytes"
    else:
        response_kind = "json"

    body_model: type[BaseModel] | None = None
    if not params:
        request_kind: RequestKind = "none"
        endpoint_params: list[inspect.Parameter] = []
    elif byte_params:
        request_kind = "multipart"
        endpoint_params = [_multipart_param(p, p.name in byte_params) for p in params]
    elif method == "GET":
        request_kind = "query"
        endpoint_params = [
            inspect.Parameter(
                p.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=p.annotation,
                default=Query(... if p.default is p.empty else p.default),
            )
            for p in params
        ]
    else:
        request_kind = "json"
        fields: dict[str, Any] = {
            p.name: (p.annotation, ... if p.default is p.empty else p.default) for p in params
        }
        body_model = create_model(  # type: ignore[call-overload]
            f"{model_prefix}Request", __config__=ConfigDict(extra="forbid"), **fields
        )
        endpoint_params = [
            inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=body_model)
        ]
    return HandlerSignature(
        request_kind=request_kind,
        params=params,
        body_model=body_model,
        endpoint_params=endpoint_params,
        response_kind=response_kind,
        return_annotation=ret,
        byte_params=byte_params,
    )


def _is_bytes(annotation: Any) -> bool:
    if annotation in (bytes, bytearray):
        return True
    args = typing.get_args(annotation)
    return bool(args) and all(a in (bytes, bytearray, type(None)) for a in args) and bytes in args


def _multipart_param(p: inspect.Parameter, is_bytes: bool) -> inspect.Parameter:
    default = ... if p.default is p.empty else p.default
    if is_bytes:
        return inspect.Parameter(
            p.name, inspect.Parameter.KEYWORD_ONLY, annotation=UploadFile, default=File(default)
        )
    return inspect.Parameter(
        p.name, inspect.Parameter.KEYWORD_ONLY, annotation=p.annotation, default=Form(default)
    )
