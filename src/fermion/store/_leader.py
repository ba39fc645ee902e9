"""The controller lease: which of the servers sharing this store runs the controllers."""

from __future__ import annotations

from sqlalchemy import Float, String
from sqlalchemy.orm import Mapped, mapped_column

from ._models import Base

CONTROLLER_LEASE = "controller"


class ControllerLeaseRow(Base):
    __tablename__ = "controller_lease"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    lease_owner: Mapped[str | None] = mapped_column(String(40), nullable=True)  # a server id
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)
    url: Mapped[str] = mapped_column(String(500), default="")  # where the leader's API answers
    since: Mapped[float] = mapped_column(Float, default=0.0)  # when its owner took it
