"""The agent that runs inside a cloud (`fermion agent start`): it dials out to the server, runs
the workloads the server asks for on its own machine, and reports their state."""

from __future__ import annotations

from ._agent import Agent, AgentError

__all__ = ["Agent", "AgentError"]
