"""Runs one job attempt's command and records its exit code beside it (so that a server which
restarted, and is no longer the parent, still learns how the attempt ended)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

NOT_RUNNABLE = 127  # the shell's code for "command not found"


def _record(code: int) -> None:
    tmp = Path("exit_code.tmp")
    tmp.write_text(str(code))
    os.replace(tmp, "exit_code")


def main() -> None:
    command = sys.argv[sys.argv.index("--") + 1 :]
    try:
        child = subprocess.Popen(command)
    except OSError as exc:  # the job's own fault (a wrong path, not executable): say so, with the cause
        print(f"cannot run {command[0]!r}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        _record(NOT_RUNNABLE)
        sys.exit(NOT_RUNNABLE)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    code = child.wait()
    _record(code)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
