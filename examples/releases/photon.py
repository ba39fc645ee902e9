"""A greeter whose wording comes from its RELEASE: the photon the demo rolls out as canaries.
Release "2-buggy" fails a third of its calls, which is what a bad release looks like to a gateway."""

from __future__ import annotations

import os
import random

from fermion import Photon, handler


class Greeter(Photon):
    resources = {"cpus": 0.25, "memory_gb": 0.25}

    def init(self) -> None:
        self.release = os.environ.get("RELEASE", "1")

    @handler
    def greet(self, name: str) -> dict[str, str]:
        if self.release.endswith("buggy") and random.random() < 1 / 3:
            raise RuntimeError(f"release {self.release}: a bug")
        wording = "Hello" if self.release.startswith("1") else "Hi there"
        return {"greeting": f"{wording}, {name}!", "release": self.release}
