"""``python -m fermion.photon.replica ARCHIVE [options]``: a backend's replica process. It serves
as ``fermion photon run`` does, with its options, but parses them without the CLI (typer and rich
take a sixth of a second to import, and every replica start waits for them).

``python -m fermion.photon.replica --standby FOLDER [--listen-fd N]``: a spare of a warm pool. It imports the serving
stack (FastAPI, uvicorn, pydantic, the photon runtime: half a second of a cold start), then waits
in its folder for ``assign.json`` ({"argv": [...], "env": {...}}), written by its backend when a
replica takes it over; it reads and deletes the file, takes that environment and serves as above
(on the listening socket it was started with, where it was given one)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


ASSIGNMENT = "assign.json"
STANDBY_POLL_S = 0.005


def standby(folder: Path) -> list[str]:
    """Import what serving needs, wait for the assignment, take its environment; its argv."""
    import json
    import os
    import time

    from . import _package, _run, _serve  # noqa: F401 - imported now: the replica will not wait for them
    from ._app import build_app  # noqa: F401

    path = folder / ASSIGNMENT
    while not path.exists():
        time.sleep(STANDBY_POLL_S)
    assignment = json.loads(path.read_text())
    path.unlink()
    os.environ.clear()
    os.environ.update(assignment["env"])
    return [str(a) for a in assignment["argv"]]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--standby"] and len(argv) in (2, 4):
        inherited = argv[2:]  # --listen-fd N: the socket it holds serves the replica that takes it
        argv = standby(Path(argv[1])) + inherited
        sys.argv[1:] = argv
    parser = argparse.ArgumentParser(prog="python -m fermion.photon.replica", description=__doc__)
    parser.add_argument("ref", help="a .photon archive, or path/to/file.py:Class")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--graceful-timeout", type=float, default=30.0)
    parser.add_argument("--auth-secret-file", type=Path)
    parser.add_argument("--listen-fd", type=int, help="serve on this inherited listening socket")
    args = parser.parse_args(argv)
    from ..errors import FermionError
    from ._run import run_photon

    try:
        return run_photon(args.ref, host=args.host, port=args.port, port_file=args.port_file, log_level=args.log_level,
                          graceful_timeout_s=args.graceful_timeout, auth_secret_file=args.auth_secret_file,
                          listen_fd=args.listen_fd)
    except FermionError as exc:  # as the CLI prints it: the replica's log says why it could not start
        print(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
