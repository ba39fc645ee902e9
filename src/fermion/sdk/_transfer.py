"""Moving chunks between this machine and the server: a folder's missing chunks up, a server-side
transfer followed to its result."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..config import fermion_home
from ..errors import FermionError, remote_error_for
from ._http import Transport
from ._progress import ProgressFactory

WORKERS = 8  # chunks in flight at once


def plan_cache(path: Path) -> Path:
    """What this machine read of a folder last time: unchanged files are not read again."""
    return fermion_home() / "plans" / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]}.json"


def send_plan(http: Transport, plan: Any, description: str, missing_path: str, chunk_path: str,
              where: dict[str, str | None], progress: ProgressFactory) -> Any:
    """Send the chunks of a planned folder that the server's store lacks; ``where`` (the cloud,
    or the project) goes with each call. Returns the TransferReport."""
    from ..data import Progress, send_chunks

    chunks = plan.chunks
    missing: list[str] = []
    items = list(chunks.items())
    for i in range(0, len(items), 100_000):
        missing += http.request("POST", missing_path, json={**where, "chunks": dict(items[i:i + 100_000])})["missing"]
    params = {k: v for k, v in where.items() if v} or None

    def put(sha: str, data: bytes) -> int:
        http.request("PUT", f"{chunk_path}/{sha}", params=params, content=data,
                     headers={"content-type": "application/octet-stream"})
        return len(data)

    with progress(description, sum(chunks[s] for s in missing)) as bar:
        return send_chunks(plan, missing, put, workers=WORKERS, progress=Progress(bar.advance))


def follow_stream(http: Transport, path: str, body: dict[str, Any], description: str,
                  progress: ProgressFactory) -> dict[str, Any]:
    """Follow a server-side transfer: its JSON lines drive a bar; the last is its result."""
    with progress(description, None) as bar, http.stream("POST", path, json=body) as lines:
        total = 0
        for raw in lines:
            line = json.loads(raw)
            if "total" in line:
                total = int(line["total"])
                bar.total(total)
            elif "done" in line:
                bar.completed(int(line["done"]))
            elif "error" in line:
                hint = f" ({line['hint']})" if line.get("hint") else ""
                raise remote_error_for(int(line.get("status", 500)), f"{line['error']}{hint}")
            elif "result" in line:
                bar.completed(total)
                return line["result"]
    raise FermionError("the server ended the transfer without a result", hint="run it again: it resumes")
