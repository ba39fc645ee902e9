"""How a job attempt's command line is built on the host that runs it (any backend)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path


def launch_command(command: list[str], workers: int) -> list[str]:
    """An attempt's whole command line on this host: ``python`` is this Python, several workers
    run under torchrun, and fermion.backends._attempt records the exit code."""
    cmd = list(command)
    if cmd and Path(cmd[0]).name in ("python", "python3"):
        cmd[0] = sys.executable
    if workers > 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(workers),
               "--master_addr", "127.0.0.1", "--master_port", str(port), *cmd[1:]]
    # the wrapper is run as a module the package never imports (else Python warns at start)
    return [sys.executable, "-m", "fermion.backends._attempt", "--", *cmd]
