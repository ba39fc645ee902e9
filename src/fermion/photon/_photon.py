"""The Photon base class: a plain Python class whose handlers become an HTTP service."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, ClassVar

from ._handler import HandlerOptions, handler_options


class Photon:
    """Subclass this, decorate methods with ``@handler``, and serve with ``fermion photon run``.

    Class attributes: ``name`` (defaults to the class name in kebab case), ``requirements``
    (pip specifiers), ``resources`` (cpus, memory_gb, accelerator...), ``max_concurrency``
    (sync handler calls running at once in this replica).
    """

    name: ClassVar[str | None] = None
    requirements: ClassVar[list[str]] = []
    resources: ClassVar[dict[str, Any]] = {}
    max_concurrency: ClassVar[int] = 8

    def init(self) -> None:
        """Runs once per replica before it reports ready. Load models here."""

    @classmethod
    def photon_name(cls) -> str:
        if cls.name:
            return cls.name
        return re.sub(r"(?<!^)(?=[A-Z])", "-", cls.__name__).lower()

    @classmethod
    def handlers(cls) -> dict[str, tuple[HandlerOptions, Callable[..., Any]]]:
        """The handler methods of this class, by name, in definition order."""
        found: dict[str, tuple[HandlerOptions, Callable[..., Any]]] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                opts = handler_options(value)
                if opts is not None and inspect.isfunction(value):
                    found[attr] = (opts, value)
        return found
