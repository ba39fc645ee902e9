"""Find a Photon class from 'path.py:Class', 'package.module:Class' or a .photon archive."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

from ..errors import PhotonLoadError
from ._photon import Photon


def split_ref(ref: str) -> tuple[str, str | None]:
    target, sep, cls_name = ref.rpartition(":")
    if not sep or (len(target) == 1 and target.isalpha()):  # no class, or a Windows drive
        return ref, None
    return target, cls_name or None


def load_module(target: str) -> ModuleType:
    path = Path(target)
    if target.endswith(".py") or path.exists():
        if not path.is_file():
            raise PhotonLoadError(f"no photon file at {target!r}", hint="give a path to a .py file")
        path = path.resolve()
        # a stable, unique module name per file so two photons with the same filename coexist
        mod_name = f"_fermion_photon_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))  # sibling imports of the photon file
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[mod_name]
            raise PhotonLoadError(f"importing {target} failed: {type(exc).__name__}: {exc}") from exc
        return module
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise PhotonLoadError(
            f"cannot import {target!r}: {exc}", hint="use 'path/to/file.py:Class' or 'package.module:Class'"
        ) from exc


def load_photon_class(ref: str) -> type[Photon]:
    """The Photon subclass named by ``ref``; the class name may be left out if there is one."""
    target, cls_name = split_ref(ref)
    module = load_module(target)
    if cls_name:
        cls = getattr(module, cls_name, None)
        if cls is None:
            raise PhotonLoadError(f"{target} has no attribute {cls_name!r}")
        if not (inspect.isclass(cls) and issubclass(cls, Photon)):
            raise PhotonLoadError(f"{target}:{cls_name} is not a subclass of fermion.Photon")
        return cls
    found = [
        c for c in vars(module).values()
        if inspect.isclass(c) and issubclass(c, Photon) and c is not Photon and c.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = ", ".join(c.__name__ for c in found) or "none"
        raise PhotonLoadError(
            f"{target} defines {len(found)} photon classes ({names})", hint=f"name one: {target}:ClassName"
        )
    return found[0]
