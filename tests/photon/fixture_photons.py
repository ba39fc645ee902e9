"""Photons that misbehave on purpose, for tests."""

from __future__ import annotations

import os
import time

from fermion import Photon, handler


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
