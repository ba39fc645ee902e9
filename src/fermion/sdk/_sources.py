"""Where a dataset version comes from: a folder as it is, or a URL's objects fetched into a temporary
folder first, with this machine's credentials for it (the server never sees them)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..errors import UserInputError
from ._progress import ProgressFactory

HTTP_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class Source:
    """A folder to push: the caller's own (``local``: its plan cache is used), or a temporary one
    holding what ``url`` named."""

    folder: Path
    local: bool
    url: str | None = None

    @property
    def note(self) -> str:
        """The version's default message: where an import came from (never its credentials)."""
        return f"imported from {public_url(self.url)}" if self.url else ""


def is_url(source: str | Path) -> bool:
    """Whether ``source`` names a URL (``s3://…``) rather than a folder. Asked of the text before it
    becomes a Path, which would fold ``s3://b/x`` into the folder ``s3:/b/x``."""
    return isinstance(source, str) and "://" in source


def public_url(url: str) -> str:
    """``url`` without what may be a credential: a user and password, a (presigned) query."""
    u = urlparse(url)
    return u._replace(netloc=u.hostname + (f":{u.port}" if u.port else "") if u.hostname else u.netloc,
                      query="", fragment="").geturl()


@contextmanager
def fetched(source: str | Path, progress: ProgressFactory, *, endpoint: str | None = None,
            options: dict[str, Any] | None = None) -> Iterator[Source]:
    """The folder to push from ``source``: a folder as it is, or a URL (``s3://BUCKET/PREFIX``,
    ``gs://…``, ``az://…``, ``file:///PATH``: every object under it; ``http(s)://`` one file) read
    whole into a temporary folder, removed afterwards. A bad source raises UserInputError (or
    StoreError) here, before anything is made on the server."""
    if not is_url(source):
        if endpoint is not None or options:
            raise UserInputError("endpoint and source_options are for a URL source", hint="a folder needs neither")
        folder = Path(source)
        if not folder.is_dir():
            raise UserInputError(f"{folder} is not a folder", hint="give the folder that holds the dataset's files, or a URL")
        yield Source(folder, True)
        return
    url = str(source)
    from ..config import fermion_home

    home = fermion_home()
    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="import-", dir=home))
    try:
        if urlparse(url).scheme in HTTP_SCHEMES:
            if endpoint is not None or options:
                raise UserInputError("endpoint and source_options are for a bucket URL", hint="an http(s) URL needs neither")
            _download_http(url, tmp, progress)
        else:
            _download_objects(url, endpoint, options or {}, tmp, progress)
        yield Source(tmp, False, url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download_http(url: str, dest: Path, progress: ProgressFactory) -> None:
    import httpx

    from ..data import safe_relpath

    name = unquote(urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]).replace("/", "_") or "download"
    try:
        target = dest / safe_relpath(name)
        # a plain client: the server's token must never go to someone else's URL
        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as r:
            if r.status_code != 200:
                raise UserInputError(f"{public_url(url)} answered HTTP {r.status_code}", hint="check the URL")
            total = int(r.headers.get("content-length") or 0) or None
            with progress(f"fetch {name}", total) as bar, open(target, "wb") as f:
                for piece in r.iter_bytes(1 << 20):
                    f.write(piece)
                    bar.advance(len(piece))
    except (httpx.HTTPError, ValueError, OSError) as exc:
        raise UserInputError(f"cannot fetch {public_url(url)}: {exc}",
                             hint="check the URL and that this machine can reach it") from None


def _download_objects(url: str, endpoint: str | None, options: dict[str, Any], dest: Path,
                      progress: ProgressFactory) -> None:
    from ..data import ObjectStore, StoreConfig, StoreError, safe_relpath

    try:
        config = StoreConfig(url=url, endpoint=endpoint, options=options)
    except ValueError as exc:
        raise UserInputError(f"invalid source URL {public_url(url)!r}: {_first_error(exc)}") from None
    source = ObjectStore(config, url, create=False)
    try:
        objects = source.list("")
        if not objects:
            raise UserInputError(f"{url} holds no objects", hint="check the bucket, the prefix and the credentials")
        with progress(f"fetch {url}", sum(objects.values())) as bar:
            for key, size in sorted(objects.items()):
                try:
                    target = dest / safe_relpath(key)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source.download(key, target)
                except (ValueError, OSError) as exc:  # e.g. both "a" and "a/b": a file cannot be a folder too
                    raise UserInputError(f"{url}: object {key!r} cannot be a file of a dataset: {exc}") from None
                bar.advance(size)
    except StoreError as exc:
        raise StoreError(exc.message, hint="check the URL, the endpoint and the credentials given as source options") from None


def _first_error(exc: ValueError) -> str:
    """A pydantic ValidationError's first message (its text otherwise)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return str(errors()[0]["msg"]).removeprefix("Value error, ")
    return str(exc)
