"""Photons that misbehave on purpose, for tests."""

from __future__ import annotations

import os
import random
import stat
import time
import urllib.error
import urllib.request

from fermion import Photon, handler
from fermion.errors import RemoteError


class SlowInit(Photon):
    def init(self) -> None:
        time.sleep(float(os.environ.get("SLOW_INIT_S", "2")))

    @handler
    def ping(self) -> str:
        return "pong"


class FailingInit(Photon):
    def init(self) -> None:
        raise RuntimeError("model weights not found at /nowhere")

    @handler
    def ping(self) -> str:
        return "pong"


class Slow(Photon):
    @handler
    def work(self, seconds: float) -> dict[str, float]:
        time.sleep(seconds)
        return {"slept": seconds}


class Versioned(Photon):
    """Answers with the VERSION its replica was deployed with."""

    resources = {"cpus": 0.25, "memory_gb": 0.25}

    @handler
    def version(self) -> dict[str, str]:
        time.sleep(0.005)
        return {"version": os.environ.get("VERSION", "?"), "replica": os.environ.get("FERMION_REPLICA_ID", "?")}


class Flaky(Photon):
    """Answers with its VERSION; fails a FAIL_SHARE of its calls: a bad release (500), or with
    FAIL_STATUS=502 a replica whose backing service is failing it."""

    resources = {"cpus": 0.25, "memory_gb": 0.25}

    @handler
    def version(self) -> dict[str, str]:
        time.sleep(0.002)
        if random.random() < float(os.environ.get("FAIL_SHARE", "0")):
            status = int(os.environ.get("FAIL_STATUS", "500"))
            if status != 500:
                raise RemoteError(status, "the service behind this replica failed (on purpose)")
            raise RuntimeError("this release is broken (on purpose)")
        return {"version": os.environ.get("VERSION", "?")}


class CrashOnInit(Photon):
    resources = {"cpus": 0.25, "memory_gb": 0.25}

    def init(self) -> None:
        raise RuntimeError("CUDA driver missing (on purpose)")

    @handler
    def ping(self) -> str:
        return "pong"


class Snoop(Photon):
    """Tries what a workload must not be able to do: read the server's files, see its environment,
    use more memory than it declared."""

    resources = {"cpus": 0.25, "memory_gb": 0.25}

    @handler
    def read(self, path: str) -> dict[str, str]:
        try:
            with open(path, "rb") as f:
                return {"content": f.read(4096).decode(errors="replace")}
        except OSError as exc:
            return {"error": type(exc).__name__}

    @handler
    def environ(self) -> dict[str, str]:
        return dict(os.environ)

    @handler
    def hunt(self, needles: list[str], skip: list[str]) -> dict[str, object]:
        """Every regular file it can read (but under ``skip``) that holds one of ``needles``."""
        wanted = [n.encode() for n in needles]
        found, read = [], 0
        for root, dirs, names in os.walk("/"):
            if root in ("/proc", "/sys", "/dev") or any(root == s or root.startswith(s + "/") for s in skip):
                dirs[:] = []
                continue
            for name in names:
                path = os.path.join(root, name)
                try:
                    info = os.lstat(path)
                    if not stat.S_ISREG(info.st_mode) or info.st_size > 4 << 20:
                        continue
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                read += 1
                if any(n in data for n in wanted):
                    found.append(path)
        return {"found": found, "read": read, "top": sorted(os.listdir("/"))}

    @handler
    def call(self, url: str, headers: dict[str, str]) -> int:
        """The status of a direct call to ``url`` (another replica, say)."""
        request = urllib.request.Request(url, data=b"{}", headers={"content-type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status
        except urllib.error.HTTPError as exc:
            return exc.code

    @handler
    def hog(self, mb: int) -> int:
        block = bytearray(mb << 20)
        for i in range(0, len(block), 4096):  # touch every page so it is really resident
            block[i] = 1
        return len(block)


class LatencyBound(Photon):
    """A batched handler whose batches cost 100 ms, with a 300 ms latency target."""

    @handler(batch={"max_size": 4, "max_wait_ms": 1, "max_latency_ms": 300})
    def work(self, items: list[float]) -> list[float]:
        time.sleep(0.1)
        return items
