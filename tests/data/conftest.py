"""Object-store emulators for the storage tests, one of each per session, started only when a test
needs them: moto (S3), gcp-storage-emulator (GCS) and Azurite (Azure Blob, where npm installed it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fermion.data import ObjectStore, StoreConfig, open_store
from fermion.testing import Emulator, azurite_available, start_azurite, start_gcs_emulator, start_s3_emulator

STORE_KINDS = ("file", "s3", "gcs", "azure")
EMULATOR_FIXTURE = {"s3": "s3_emulator", "gcs": "gcs_emulator", "azure": "azurite"}


@pytest.fixture(scope="session")
def s3_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emu = start_s3_emulator(tmp_path_factory.mktemp("s3"))
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emu = start_gcs_emulator(tmp_path_factory.mktemp("gcs"))
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    if not azurite_available():
        pytest.skip("Azurite is not installed: `make install` puts it under .venv/azurite with npm (needs Node), "
                    "or set FERMION_AZURITE to an azurite-blob binary")
    emu = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield emu
    emu.stop()


def fresh_name() -> str:
    """A bucket or container name valid on every service (3-63 lowercase letters, digits, hyphens)."""
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., ObjectStore]:
    """``new_store(kind, prefix="")``: a store in a new, empty bucket (a new folder for ``file``)."""

    def make(kind: str, prefix: str = "") -> ObjectStore:
        if kind == "file":
            return open_store(StoreConfig(url=f"file://{tmp_path / fresh_name() / prefix}"))
        emulator: Emulator = request.getfixturevalue(EMULATOR_FIXTURE[kind])
        return open_store(emulator.store(fresh_name(), prefix))

    return make


@pytest.fixture(params=STORE_KINDS)
def any_store(request: pytest.FixtureRequest, new_store: Callable[..., ObjectStore]) -> ObjectStore:
    """A fresh store of each kind in turn."""
    return new_store(request.param)
