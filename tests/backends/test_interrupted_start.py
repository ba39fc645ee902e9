"""A server killed -9 at any point of a local workload's start leaves nothing that a restarted
server cannot find by the workload's id alone (issue 34, step 4: intent before action). The
"server" here is a real process that runs the local backend's start and is killed mid-way; the
restarted one is a fresh backend over the same cloud root, as a restarted server opens it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fermion.backends import Isolation, LocalBackend
from fermion.backends._local import _signal_group
from fermion.clouds import CloudConfig

SANDBOXES = [pytest.param(True, id="sandboxed"), pytest.param(False, id="unsandboxed")]
CAN_SANDBOX = Isolation().bwrap is not None
STARTERS: list[subprocess.Popen[str]] = []

# the starting server: prints "go" just before the start, then starts a job attempt that would run
# for an hour; with SLOW set, its sandbox reports the workload's pid only after an hour (the process
# runs meanwhile: the window the pid file used to leave unrecorded)
STARTER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fermion.backends import Isolation, LocalBackend, Workload
    from fermion.clouds import CloudConfig

    root, home, wid, sandboxed, slow = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", sys.argv[5] == "1"

    class LateToReport(Isolation):
        def start(self, *args, **kwargs):
            started = super().start(*args, **kwargs)
            print("running", flush=True)
            time.sleep(3600)
            return started

    kind = LateToReport if slow else Isolation
    isolation = kind() if sandboxed else kind(sandbox=False, memory_limits=False, allow_unsandboxed=True)
    backend = LocalBackend(CloudConfig(name="alpha"), root, server_home=home, isolation=isolation)
    print("go", flush=True)
    # the last argument marks its processes for the test, whatever their folder
    backend.start(Workload(id=wid, kind="job", command=["python", "-c", "import time; time.sleep(3600)",
                                                         f"marker-{wid}"]))
    print("started", flush=True)
    time.sleep(3600)
""")


def starter(tmp_path: Path, wid: str, *, sandboxed: bool, slow: bool) -> subprocess.Popen[str]:
    script = tmp_path / "starter.py"
    script.write_text(STARTER)
    (tmp_path / "home").mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "workloads"), str(tmp_path / "home"), wid,
                             "1" if sandboxed else "0", "1" if slow else "0"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    STARTERS.append(proc)
    return proc


def running(wid: str) -> list[int]:
    """The processes of workload ``wid``, found by the marker on their command line (the sandbox's
    own processes carry the command too): not the way the backend finds them."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"\0marker-{wid}\0".encode() in (entry / "cmdline").read_bytes() + b"\0":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def settled(starter_pid: int) -> bool:
    """No process is left in the killed starter's session: a child it forked has either become the
    workload (a session of its own) or is gone, so what runs now is all there will be."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getsid(int(entry.name)) == starter_pid:
                return False
        except OSError:
            continue
    return True


@pytest.fixture(autouse=True)
def nothing_left(tmp_path: Path) -> Iterator[None]:
    """Whatever a failing run left in its clouds' folders is killed, so no test leaves a process."""
    yield
    while STARTERS:
        proc = STARTERS.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    for folder in (tmp_path / "workloads" / "alpha").glob("job-*"):
        for pid in running(folder.name):
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except OSError:
                continue


def wait_until(condition, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def restarted(tmp_path: Path, sandboxed: bool) -> LocalBackend:
    isolation = Isolation() if sandboxed else Isolation(sandbox=False, memory_limits=False, allow_unsandboxed=True)
    return LocalBackend(CloudConfig(name="alpha"), tmp_path / "workloads", server_home=tmp_path / "home",
                        isolation=isolation)


def kill_server(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)  # the server only: its workload runs in a session of its own
    proc.wait(10)


@pytest.mark.parametrize("sandboxed", SANDBOXES)
def test_a_start_killed_before_the_pid_was_known_is_found_and_stopped_by_its_id(tmp_path: Path,
                                                                                sandboxed: bool) -> None:
    if sandboxed and not CAN_SANDBOX:
        pytest.skip("bubblewrap cannot run on this machine")
    proc = starter(tmp_path, "job-a1", sandboxed=sandboxed, slow=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "go" and proc.stdout.readline().strip() == "running"
    folder = tmp_path / "workloads" / "alpha" / "job-a1"
    kill_server(proc)
    assert running("job-a1"), "the workload should outlive the server that started it"
    assert not (folder / "pid").exists(), "the test should hit the window before the pid was recorded"
    backend = restarted(tmp_path, sandboxed)
    assert [h["id"] for h in backend.list_workloads()] == ["job-a1"]
    assert backend.status({"id": "job-a1"}).alive
    backend.stop({"id": "job-a1"}, force=True)  # what the controller does with a row that has no handle
    wait_until(lambda: not running("job-a1"))
    assert backend.list_workloads() == [] and not backend.status({"id": "job-a1"}).alive


@pytest.mark.parametrize("sandboxed", SANDBOXES)
def test_no_orphan_wherever_a_start_is_cut(tmp_path: Path, sandboxed: bool) -> None:
    if sandboxed and not CAN_SANDBOX:
        pytest.skip("bubblewrap cannot run on this machine")
    # kill points spread over the start, from before the fork to after the pid file: wherever one
    # lands, the id alone is enough to stop what it left
    delays = [0.0, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3]
    hit = 0
    for n, delay in enumerate(delays):
        wid = f"job-{n}"
        proc = starter(tmp_path, wid, sandboxed=sandboxed, slow=False)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
        time.sleep(delay)  # the kill point itself; nothing waits on it
        kill_server(proc)
        wait_until(lambda pid=proc.pid: settled(pid))  # what the kill left is all there is
        hit += bool(running(wid))
        restarted(tmp_path, sandboxed).stop({"id": wid}, force=True)  # the row's id: all a restart knows
        wait_until(lambda wid=wid: not running(wid))  # no orphan, wherever the kill landed
    assert hit, "no kill point left a workload running: the sweep tested nothing"


# the sandbox's outside leads the group and waits on its init, which ignores SIGTERM as a pid
# namespace's init does a signal it has no handler for; no process of the workload runs yet
SANDBOX_BEFORE_ITS_WORKLOAD = """
import subprocess, sys
init = subprocess.Popen([sys.executable, "-c", "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                         "print(os.getpid(), flush=True); time.sleep(60)"])
init.wait()
"""


def _drain_local(outside: subprocess.Popen[str], init: int) -> None:
    _signal_group(init, signal.SIGTERM)


def _drain_ray(outside: subprocess.Popen[str], init: int) -> None:
    pytest.importorskip("ray")
    from fermion.backends._ray import _birth, _drain_sandbox

    _drain_sandbox(outside.pid, _birth(outside.pid), init)


@pytest.mark.parametrize("drain", [_drain_local, _drain_ray], ids=["local", "ray"])
def test_a_drain_before_the_workloads_first_process_leaves_nothing_running(
        drain: Callable[[subprocess.Popen[str], int], None]) -> None:
    """A SIGTERM there would end the outside only (local), or reach only the init (Ray, where the
    outside is spared), and the init would start the workload unwatched, or to be killed only when
    the drain timed out."""
    outside = subprocess.Popen([sys.executable, "-c", SANDBOX_BEFORE_ITS_WORKLOAD], start_new_session=True,
                               stdout=subprocess.PIPE, text=True)
    try:
        init = int(outside.stdout.readline())
        drain(outside, init)
        outside.wait(timeout=30)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{init}").exists() and "Z" not in Path(f"/proc/{init}/stat").read_text().split()[2]:
            assert time.monotonic() < deadline, "the sandbox's init outlived the drain"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(outside.pid, signal.SIGKILL)  # whatever is left of the group, the init included
