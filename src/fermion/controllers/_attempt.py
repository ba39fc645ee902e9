"""Runs one job attempt's command and records its exit code beside it (so that a server which
restarted, and is no longer the parent, still learns how the attempt ended)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def main() -> None:
    command = sys.argv[sys.argv.index("--") + 1 :]
    child = subprocess.Popen(command)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    code = child.wait()
    tmp = Path("exit_code.tmp")
    tmp.write_text(str(code))
    os.replace(tmp, "exit_code")
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
