"""REST API v1: the routing table for gateway processes (``fermion gateway start``).

A long poll: the answer comes at once when the table changed since the version the gateway
holds, else when it changes, else after ``wait`` seconds with the same table.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from ..gateway import UNSENT_ANSWERS, table_document
from ._auth import caller, require_token
from ._principal import Principal
from ._schemas import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])
POLL_S = 0.05


class GatewayLoadReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gateway: str = Field(min_length=1, max_length=100)
    deployments: dict[str, tuple[StrictInt, StrictInt, StrictFloat | StrictInt]] = Field(
        max_length=100_000, description="deployment -> (in flight, held, seconds since its last request)")
    answers: dict[str, dict[int, list[tuple[StrictFloat | StrictInt, StrictBool]]]] = Field(
        default_factory=dict, max_length=10_000,
        description="deployment -> generation -> [(seconds, error)] of a canary's versions since the last report")


@router.post("/gateway/load")
def gateway_load(request: Request, me: Annotated[Principal, Depends(caller)], report: GatewayLoadReport) -> dict[str, Any]:
    """What a gateway process sees of each deployment's load: the autoscaler counts it."""
    me.require_admin()
    platform = request.app.state.platform
    platform.loadboard.report(report.gateway, report.deployments)
    traffic = platform.gateway.traffic
    for name, versions in report.answers.items():
        for generation, answers in versions.items():
            for seconds, error in answers[:UNSENT_ANSWERS]:
                traffic.add(name, generation, seconds, error=error)
    if any(queued for _, queued, _ in report.deployments.values()):
        platform.controller.nudge()  # a request waits at that gateway: wake its deployment now
    return {"ok": True}


@router.get("/gateway/table")
async def gateway_table(request: Request, me: Annotated[Principal, Depends(caller)],
                        after: Annotated[str, Query(max_length=100)] = "",
                        wait: Annotated[float, Query(ge=0, le=30)] = 0) -> dict[str, Any]:
    """Every route with its replicas' URLs and secrets: for a server admin's token only."""
    me.require_admin()
    platform = request.app.state.platform
    deadline = time.monotonic() + wait
    while (platform.table_version() == after and time.monotonic() < deadline and not platform.stopping()
           and not await request.is_disconnected()):
        await asyncio.sleep(POLL_S)
    return table_document(platform.table, platform.gateway.admin_token_hashes, platform.table_version(),
                          platform.leads(), platform.public_url, platform.leadership.settled)
