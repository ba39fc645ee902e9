"""Runs one job attempt's command and records its exit code beside it (so that a server which
restarted, and is no longer the parent, still learns how the attempt ended). Where the server
gave the attempt a token, it also restores the job's newest checkpoint before the command starts
and sends new ones to the stores while it runs (see _shipping.py); where the job was sent with
code, it fetches that into ``code/`` and runs the command there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

NOT_RUNNABLE = 127  # the shell's code for "command not found"
FETCH_FAILED = 75  # EX_TEMPFAIL: the job's checkpoint or data could not be fetched (the planner retries)


def _record(code: int) -> None:
    tmp = Path("exit_code.tmp")
    tmp.write_text(str(code))
    os.replace(tmp, "exit_code")


CODE_DIR = "code"
BASE_DIR = "base"  # a fine-tune's base model, from the registry


def _prepare():  # noqa: ANN202 - (checkpoint Shipper or None, OutputShipper or None)
    """Fetch what the attempt needs onto this cloud (its code, datasets, base model, newest
    checkpoint) and start sending what it makes (checkpoints, metrics, output) to the server."""
    folder = os.environ.get("FERMION_CHECKPOINT_DIR")
    server, token = os.environ.get("FERMION_SERVER_URL"), os.environ.pop("FERMION_ATTEMPT_TOKEN", None)
    data, names = os.environ.get("FERMION_DATA_DIR"), os.environ.get("FERMION_DATASETS", "")
    reach = bool(server and token)
    if os.environ.get("FERMION_CODE") or os.environ.get("FERMION_BASE_MODEL"):
        if not reach:
            raise RuntimeError("the job has code or a model to fetch, but no way to reach the server")
        from ._shipping import fetch_code, fetch_model

        if os.environ.get("FERMION_CODE"):
            fetch_code(server, token, Path(CODE_DIR).resolve())
        if os.environ.get("FERMION_BASE_MODEL"):
            fetch_model(server, token, Path(BASE_DIR).resolve(), "/api/v1/attempts/self/model")
    if data and names and reach:
        from ._shipping import fetch_datasets

        os.environ["FERMION_DATA_DIR"] = str(Path(data).resolve())
        fetch_datasets(server, token, names.split(","), Path(data).resolve())
    output = None
    out = os.environ.get("FERMION_JOB_OUTPUT")
    if out and not Path(out).is_absolute():  # a folder of this attempt's, sent on through the server
        os.environ["FERMION_JOB_OUTPUT"] = str(Path(out).resolve())
        Path(out).mkdir(parents=True, exist_ok=True)
        if reach:
            from ._shipping import OutputShipper

            output = OutputShipper(server, token, Path(out).resolve())
            output.start()
    if folder:  # the job sees an absolute folder on its own cloud, whatever the server named
        os.environ["FERMION_CHECKPOINT_DIR"] = str(Path(folder).resolve())
        Path(folder).mkdir(parents=True, exist_ok=True)
    if not (folder and reach):
        return None, output
    from ._shipping import Shipper

    shipper = Shipper(server, token, Path(folder).resolve())
    shipper.restore()
    shipper.start()
    return shipper, output


def main() -> None:
    command = sys.argv[sys.argv.index("--") + 1 :]
    try:
        shipper, output = _prepare()
    except Exception as exc:  # noqa: BLE001 - starting without them would silently redo or skew the work
        print(f"[fermion] cannot fetch what the job needs (code, data, model or checkpoint): {type(exc).__name__}: "
              f"{exc}", file=sys.stderr, flush=True)
        _record(FETCH_FAILED)
        sys.exit(FETCH_FAILED)
    cwd = CODE_DIR if os.environ.get("FERMION_CODE") and os.environ.get("FERMION_CODE_CWD") != "no" else None
    try:
        child = subprocess.Popen(command, cwd=cwd)
    except OSError as exc:  # the job's own fault (a wrong path, not executable): say so, with the cause
        print(f"cannot run {command[0]!r}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        _record(NOT_RUNNABLE)
        sys.exit(NOT_RUNNABLE)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    code = child.wait()
    if shipper is not None:
        shipper.finish()
    if output is not None and not output.finish(code):  # its result would be lost: the planner runs it again
        print("[fermion] the job's output could not be sent to the stores", file=sys.stderr, flush=True)
        code = FETCH_FAILED
    _record(code)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
