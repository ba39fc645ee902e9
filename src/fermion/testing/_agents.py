"""A cloud's agent (`fermion agent start`) as a real process for tests, examples and benchmarks."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


from ..backends import AgentBackend
from ._servers import ServerProc, fermion_cmd, kill_workloads, stop


@dataclass
class AgentProc:
    cloud: str
    root: Path  # the agent's folder: its workloads live under root/workloads
    proc: subprocess.Popen[bytes]
    log: Path
    token: str

    def restart(self) -> None:
        """Start a new agent process over the same folder (after the old one was stopped or killed)."""
        if self.proc.poll() is None:
            raise RuntimeError("the agent still runs")
        self.proc = _launch(self.root, self.log, self.proc.args)  # type: ignore[arg-type]


def issue_agent_token(server: ServerProc, cloud: str) -> tuple[str, str]:
    """A new agent token for ``cloud`` and the command the server prints to start its agent."""
    with server.api() as api:
        answer = api.post(f"/clouds/{cloud}/agent")
        answer.raise_for_status()
        out = answer.json()
    return out["token"], out["command"]


def start_agent(server: ServerProc, cloud: str, root: Path, *, wait: bool = True, token: str | None = None,
                extra: tuple[str, ...] = ()) -> AgentProc:
    """Start ``cloud``'s agent over ``root``, with ``token`` or a new one issued (which voids the
    old); once ``wait``, the server has heard it (the cloud reads healthy)."""
    if token is None:
        token, _ = issue_agent_token(server, cloud)
    root.mkdir(parents=True, exist_ok=True)
    token_file = root.parent / f"{root.name}.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    args = fermion_cmd("agent", "start", "--server", server.url, "--cloud", cloud, "--root", str(root),
                       "--token-file", str(token_file), "--log-level", "info", *extra)
    log = root.parent / f"{root.name}-agent.log"
    agent = AgentProc(cloud, root, _launch(root, log, args), log, token)
    if wait:
        try:
            wait_connected(server, cloud, agent)
        except BaseException:  # the caller never gets the process to stop: stop it here
            stop(agent.proc)
            raise
    return agent


def _launch(root: Path, log: Path, args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("FERMION_TOKEN", None)  # the agent acts with its own token only
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)


def wait_connected(server: ServerProc, cloud: str, agent: AgentProc, timeout: float = 60) -> None:
    """Until the server lists ``cloud`` as healthy, connected to this agent process (its first
    report taken in: what it runs adopted or stopped)."""
    deadline = time.monotonic() + timeout
    while True:
        instance = next((line.split(" agent ", 1)[1].split()[0] for line in reversed(
            agent.log.read_text(errors="replace").splitlines()) if " for cloud " in line and " agent " in line), None)
        with server.api() as api:
            clouds = {c["name"]: c for c in api.get("/clouds").json()}
        if instance and clouds[cloud]["health"] == "healthy" and \
                f"agent connected (instance {instance}," in clouds[cloud]["isolation"]:
            return
        if agent.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the agent of {cloud} did not connect:\n{agent.log.read_text()[-3000:]}")
        time.sleep(0.1)


@contextmanager
def running_agent(server: ServerProc, cloud: str, root: Path) -> Iterator[AgentProc]:
    """An agent for the ``with`` block; afterwards it is stopped and every workload it ran killed."""
    agent = start_agent(server, cloud, root)
    try:
        yield agent
    finally:
        stop(agent.proc)
        kill_workloads(root / "workloads")


@contextmanager
def agent_cloud(tmp: Path, name: str = "agt") -> Iterator[AgentBackend]:
    """An agent cloud without a whole server: the server's side (its backend) in this process,
    behind the agent routes on real HTTP (127.0.0.1), and a real `fermion agent start` process
    that dials in to them, its folder under ``tmp``. For backend tests and benchmarks."""
    import threading
    from types import SimpleNamespace

    import uvicorn
    from fastapi import FastAPI

    from ..api import agent_token, agents_router
    from ..backends import FaultInjector
    from ..clouds import CloudConfig
    from ..security import SecretBox
    from ..store import CloudRow, Store

    home = tmp / "agent-server"
    home.mkdir(mode=0o700, parents=True)
    config = CloudConfig(name=name, kind="agent")
    store = Store(f"sqlite:///{home / 'fermion.db'}")
    with store.session() as s:
        s.add(CloudRow(name=name, kind="agent", config=config.model_dump(), health="healthy", agent_serial=1))
    backend = AgentBackend(config)
    app = FastAPI()
    app.state.platform = SimpleNamespace(clouds={name: FaultInjector(backend)}, store=store, secrets=SecretBox(home),
                                         public_url="", stopping=lambda: False, leads=lambda: True)
    app.include_router(agents_router)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="agent-routes")
    thread.start()
    root = tmp / "agent-root"
    token_file = tmp / "agent.token"
    token_file.write_text(agent_token(app.state.platform, name, 1))
    log = tmp / "agent.log"
    proc = None
    try:
        deadline = time.monotonic() + 30
        while not (server.started and server.servers):
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the agent routes did not start")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        root.mkdir()
        proc = _launch(root, log, fermion_cmd("agent", "start", "--server", f"http://127.0.0.1:{port}", "--cloud",
                                              name, "--root", str(root), "--token-file", str(token_file)))
        while not backend.connected():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not dial in:\n{log.read_text()[-3000:]}")
            time.sleep(0.02)
        yield backend
    finally:
        if proc is not None:
            stop(proc)
        kill_workloads(root / "workloads")
        backend.close()
        server.should_exit = True
        thread.join(10)


__all__ = ["AgentProc", "agent_cloud", "issue_agent_token", "running_agent", "start_agent", "wait_connected"]
