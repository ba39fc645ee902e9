"""A Python client for any photon (or a deployment behind the gateway), built from its OpenAPI."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import RemoteError, TransportError, UserInputError, remote_error_for


@dataclass(frozen=True)
class Operation:
    name: str
    method: str
    path: str
    params: tuple[str, ...]
    request_kind: str  # json | query | multipart | none
    stream: bool
    doc: str


class Client:
    """Call a photon's handlers as methods: ``Client(url).embed(texts=["hi"])``.

    Methods come from the server's ``/openapi.json``. Streaming handlers return an iterator.
    Errors raise :class:`fermion.RemoteError` subclasses carrying the server's message;
    connection failures are retried ``retries`` times (a request that reached the server is
    never re-sent), timeouts raise :class:`fermion.TransportError`.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        headers: dict[str, str] | None = None,
        verify: bool | str | ssl.SSLContext = True,
    ) -> None:
        """``verify``: False, True (the default trust store), a CA certificate file (e.g. a Fermion
        server's self-signed one) or an ``ssl.SSLContext``."""
        self.url = url.rstrip("/")
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._retries = retries
        if isinstance(verify, str):  # httpx 0.28 deprecates a path here
            from .security._tls import ssl_context_from

            verify = ssl_context_from(verify)
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=all_headers, verify=verify)
        self._ops: dict[str, Operation] | None = None

    # -- plumbing ----------------------------------------------------------------------------
    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        request = self._http.build_request(method, path, **kwargs)
        return self._with_retries(lambda: self._http.send(request), method, path)

    def _with_retries(self, attempt: Callable[[], httpx.Response], method: str, path: str) -> httpx.Response:
        for n in range(self._retries + 1):
            try:
                return attempt()
            except httpx.ConnectError as exc:
                if n == self._retries:
                    raise TransportError(f"cannot connect to {self.url}: {exc}", hint="is the server running?") from exc
                time.sleep(0.1 * 2**n)
            except httpx.TimeoutException as exc:
                raise TransportError(f"{method} {self.url}{path} did not answer within {self._timeout:g}s") from exc
            except httpx.TransportError as exc:
                raise TransportError(f"{method} {self.url}{path} failed: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        detail: Any = None
        message = response.text or response.reason_phrase
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict) and "message" in err:
                message = str(err["message"])
            elif "detail" in body:
                message = str(body["detail"])
            detail = body.get("detail")
        raise remote_error_for(response.status_code, message, detail)

    # -- discovery ---------------------------------------------------------------------------
    @property
    def operations(self) -> dict[str, Operation]:
        if self._ops is None:
            response = self._send("GET", "/openapi.json")
            self._raise_for(response)
            self._ops = _operations_from(response.json())
        return self._ops

    def health(self) -> dict[str, Any]:
        """The server's /healthz body (raises ServiceUnavailable while not ready)."""
        response = self._send("GET", "/healthz")
        self._raise_for(response)
        return response.json()

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> dict[str, Any]:
        """Poll /healthz until ready; raise TransportError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                return self.health()
            except (TransportError, RemoteError) as exc:
                last = exc
                time.sleep(interval)
        raise TransportError(f"{self.url} was not ready within {timeout:g}s: {last}")

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        ops = self.operations
        if name not in ops:
            raise AttributeError(f"{self.url} has no handler {name!r}; it has: {', '.join(sorted(ops)) or 'none'}")
        op = ops[name]

        def method(*args: Any, **kwargs: Any) -> Any:
            return self.call(name, *args, **kwargs)

        method.__name__ = name
        method.__doc__ = op.doc
        return method

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.operations))

    # -- calling -----------------------------------------------------------------------------
    def call(self, handler: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``handler``; positional arguments map onto its parameters in order."""
        op = self.operations.get(handler)
        if op is None:
            raise UserInputError(f"{self.url} has no handler {handler!r}")
        if len(args) > len(op.params):
            raise UserInputError(f"{handler}() takes {len(op.params)} arguments, {len(args)} given")
        for pname, value in zip(op.params, args, strict=False):
            if pname in kwargs:
                raise UserInputError(f"{handler}() got two values for {pname!r}")
            kwargs[pname] = value
        request_args: dict[str, Any] = {}
        if op.request_kind == "json":
            request_args["json"] = kwargs
        elif op.request_kind == "query":
            request_args["params"] = kwargs
        elif op.request_kind == "multipart":
            files = {k: (k, v) for k, v in kwargs.items() if isinstance(v, bytes | bytearray)}
            request_args["files"] = files
            request_args["data"] = {k: v for k, v in kwargs.items() if k not in files}
        elif kwargs:
            raise UserInputError(f"{handler}() takes no arguments")
        if op.stream:
            return self._stream(op, request_args)
        response = self._send(op.method, op.path, **request_args)
        self._raise_for(response)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    def _stream(self, op: Operation, request_args: dict[str, Any]) -> Iterator[Any]:
        request = self._http.build_request(
            op.method, op.path, headers={"Accept": "text/event-stream"}, **request_args
        )
        response = self._with_retries(lambda: self._http.send(request, stream=True), op.method, op.path)
        try:
            if response.status_code >= 400:
                response.read()
                self._raise_for(response)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                yield from response.iter_bytes()
                return
            yield from _parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise TransportError(f"stream from {self.url}{op.path} broke off: {exc}") from exc
        finally:
            response.close()


def _parse_sse(lines: Iterator[str]) -> Iterator[Any]:
    event, data = "message", []
    for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line == "" and data:
            payload = json.loads("\n".join(data))
            if event == "end":
                return
            if event == "error":
                raise RemoteError(500, str(payload.get("message")), detail=payload)
            yield payload
            event, data = "message", []
    raise TransportError("the stream ended before the server finished it")


def _operations_from(spec: dict[str, Any]) -> dict[str, Operation]:
    ops: dict[str, Operation] = {}
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            name = op.get("operationId")
            if not name:
                continue
            content = op.get("requestBody", {}).get("content", {})
            if "multipart/form-data" in content:
                kind = "multipart"
            elif content:
                kind = "json"
            elif op.get("parameters"):
                kind = "query"
            else:
                kind = "none"
            ops[name] = Operation(
                name=name,
                method=method.upper(),
                path=path,
                params=tuple(op.get("x-fermion-params", ())),
                request_kind=kind,
                stream=bool(op.get("x-fermion-stream")),
                doc=op.get("description") or op.get("summary") or name,
            )
    return ops
