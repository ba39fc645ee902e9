"""Datasets across real object-store servers on loopback (moto for S3, gcp-storage-emulator for
GCS, Azurite for Azure Blob): push, sync, verify and repair, resume, concurrent pushes, encryption."""

from __future__ import annotations

import json
import random
import threading
import uuid
from pathlib import Path

import pytest

from fermion.data import (
    CHUNK_MAX,
    DatasetKey,
    DatasetView,
    ObjectStore,
    StoreError,
    diff,
    open_store,
    pull,
    push_folder,
    sync,
    verify,
)
from fermion.errors import ConflictError
from fermion.testing import Emulator


def make_files(root: Path, n: int = 16, seed: int = 0, big: int = 1) -> dict[str, bytes]:
    """Text and binary files of mixed sizes; ``big`` of them span several chunks."""
    rng = random.Random(seed)
    files = {}
    for i in range(n):
        if i < big:
            data = rng.randbytes(rng.randint(CHUNK_MAX, CHUNK_MAX + (1 << 20)))
        elif i % 3 == 0:
            data = "\n".join(f"ticket {seed}-{i}-{j}: the printer on floor {j % 7} is jammed" for j in range(200)).encode()
        else:
            data = rng.randbytes(rng.randint(0, 200_000))
        rel = f"part-{i % 4}/file-{i}.{'txt' if i % 3 == 0 else 'bin'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def bucket() -> str:
    return f"b-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3(s3_emulator: Emulator) -> ObjectStore:
    return open_store(s3_emulator.store(bucket()), "aws")


@pytest.fixture
def gcs(gcs_emulator: Emulator) -> ObjectStore:
    return open_store(gcs_emulator.store(bucket()), "gcp")


def test_a_dataset_pushed_to_s3_is_synced_to_gcs_and_verified(s3: ObjectStore, gcs: ObjectStore, tmp_path: Path) -> None:
    files = make_files(tmp_path / "src")
    manifest, pushed = push_folder(DatasetView(s3, "tickets"), tmp_path / "src")
    assert pushed.chunks_sent == pushed.chunks and pushed.bytes_sent == sum(len(d) for d in files.values())

    report = sync([DatasetView(s3, "tickets")], DatasetView(gcs, "tickets"))
    assert report.versions == [manifest.digest] and report.failed == []
    assert report.chunks_sent == pushed.chunks and report.bytes_sent == pushed.bytes_sent
    assert verify(DatasetView(gcs, "tickets")).ok

    pull(DatasetView(gcs, "tickets"), DatasetView(gcs, "tickets").read(manifest.digest), tmp_path / "out")
    assert read_tree(tmp_path / "out") == files

    # a second version that edits one file in the middle: only its changed chunk travels, and is stored
    big = next(p for p in files if len(files[p]) > CHUNK_MAX)
    data = bytearray(files[big])
    data[len(data) // 2: len(data) // 2 + 100] = b"x" * 100
    (tmp_path / "src" / big).write_bytes(bytes(data))
    v2, pushed2 = push_folder(DatasetView(s3, "tickets"), tmp_path / "src", parent=manifest.digest)
    assert 0 < pushed2.bytes_sent <= 2 * 1024 * 1024 < len(data)
    again = sync([DatasetView(s3, "tickets")], DatasetView(gcs, "tickets"))
    assert set(again.versions) == {manifest.digest, v2.digest}
    assert again.bytes_sent == pushed2.bytes_sent  # the target lacked only that chunk
    assert diff(manifest, v2)["changed"] == [big]


def test_a_corrupt_chunk_is_named_by_verify_and_repaired_by_sync(s3: ObjectStore, gcs: ObjectStore, tmp_path: Path) -> None:
    make_files(tmp_path / "src", n=8)
    manifest, _ = push_folder(DatasetView(s3, "d"), tmp_path / "src")
    sync([DatasetView(s3, "d")], DatasetView(gcs, "d"))
    victim = next(f for f in manifest.files if f.chunks)
    sha = victim.chunks[0][0]
    key = DatasetView(gcs, "d").chunk_key(sha)
    blob = bytearray(gcs.get(key))
    blob[len(blob) // 2] ^= 0xFF  # same size: only reading it back can tell
    gcs.put(key, bytes(blob))

    found = verify(DatasetView(gcs, "d"))
    assert not found.ok and list(found.corrupt) == [sha] and victim.path in found.corrupt[sha]
    assert found.missing == {}
    assert found.withdrawn == [manifest.digest] and DatasetView(gcs, "d").digests() == []  # down until repaired
    repaired = sync([DatasetView(s3, "d")], DatasetView(gcs, "d"))
    assert repaired.chunks_sent == 1
    assert verify(DatasetView(gcs, "d")).ok
    assert gcs.get(key) == s3.get(key)


class FailingStore(ObjectStore):
    """A store whose connection breaks after ``allowed`` chunk writes."""

    def __init__(self, inner: ObjectStore, allowed: int) -> None:
        self.__dict__.update(inner.__dict__)
        self.allowed, self.lock = allowed, threading.Lock()

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> bool:
        if key.startswith("chunks/"):
            with self.lock:
                self.allowed -= 1
                if self.allowed < 0:
                    raise StoreError(f"connection to {self.name} broken")
        return super().put(key, data, create_only=create_only)


def test_an_interrupted_sync_resumes_with_what_is_missing(s3: ObjectStore, gcs: ObjectStore, tmp_path: Path) -> None:
    make_files(tmp_path / "src", n=30, big=0)
    manifest, pushed = push_folder(DatasetView(s3, "d"), tmp_path / "src")
    broken = FailingStore(gcs, allowed=10)
    with pytest.raises(StoreError, match="broken"):
        sync([DatasetView(s3, "d")], DatasetView(broken, "d"), workers=2)
    target = DatasetView(gcs, "d")
    assert target.digests() == []  # no version is visible before all its chunks are
    arrived = pushed.chunks - len(target.missing(manifest.chunk_sizes()))
    assert 10 <= arrived < pushed.chunks

    resumed = sync([DatasetView(s3, "d")], target)
    assert resumed.chunks_sent == pushed.chunks - arrived  # nothing is sent twice
    assert resumed.versions == [manifest.digest] and verify(target).ok


def test_two_concurrent_pushes_leave_a_valid_dataset(s3: ObjectStore, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_files(a, n=20, seed=1)
    make_files(b, n=20, seed=2)
    shared = (a / "part-1" / "file-1.bin").read_bytes()
    (b / "shared.bin").write_bytes(shared)  # the two pushes race on the same chunks
    results: dict[str, object] = {}

    def push(folder: Path) -> None:
        results[folder.name] = push_folder(DatasetView(s3, "d"), folder)[0]

    threads = [threading.Thread(target=push, args=(f,)) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    view = DatasetView(s3, "d")
    assert sorted(view.digests()) == sorted(m.digest for m in results.values())  # type: ignore[attr-defined]
    assert verify(view).ok
    for folder in (a, b):
        out = tmp_path / f"out-{folder.name}"
        pull(view, results[folder.name], out)  # type: ignore[arg-type]
        assert read_tree(out) == read_tree(folder)


def test_an_encrypted_dataset_is_unreadable_in_the_store_without_its_key(s3: ObjectStore, tmp_path: Path) -> None:
    files = make_files(tmp_path / "src", n=9)
    key = DatasetKey(DatasetKey.generate())
    manifest, _ = push_folder(DatasetView(s3, "secret", key), tmp_path / "src")
    objects = {k: s3.get(k) for k in s3.list("")}
    assert objects, "nothing was stored"
    plain_shas = set(manifest.chunk_sizes())
    for k, blob in objects.items():
        assert b"printer on floor" not in blob and b"part-0/file-0" not in blob, k  # no content, no file names
        assert k.rsplit("/", 1)[-1] not in plain_shas  # chunks are not named by their sha256
    with pytest.raises(Exception):
        DatasetView(s3, "secret").read(manifest.digest)  # without the key the manifest does not parse
    with pytest.raises(Exception):
        DatasetView(s3, "secret", DatasetKey(DatasetKey.generate())).read(manifest.digest)  # nor with another key
    pull(DatasetView(s3, "secret", key), manifest, tmp_path / "out")
    assert read_tree(tmp_path / "out") == files


def test_a_commit_is_refused_while_a_chunk_is_missing(s3: ObjectStore, tmp_path: Path) -> None:
    make_files(tmp_path / "src", n=4)
    manifest, _ = push_folder(DatasetView(s3, "d"), tmp_path / "src")
    view = DatasetView(s3, "d")
    sha = next(iter(manifest.chunk_sizes()))
    s3.delete([view.chunk_key(sha)])
    other = manifest.model_copy(update={"message": "again"})
    with pytest.raises(ConflictError, match="lacks 1 chunks"):
        view.commit(other)
    assert view.digests() == [manifest.digest]


def test_azure_blob_holds_a_synced_dataset(azurite: Emulator, s3: ObjectStore, tmp_path: Path) -> None:
    az = open_store(azurite.store(bucket()), "azure")
    files = make_files(tmp_path / "src", n=10)
    manifest, _ = push_folder(DatasetView(s3, "d"), tmp_path / "src")
    report = sync([DatasetView(s3, "d")], DatasetView(az, "d"))
    assert report.versions == [manifest.digest]
    assert verify(DatasetView(az, "d")).ok
    pull(DatasetView(az, "d"), manifest, tmp_path / "out")
    assert read_tree(tmp_path / "out") == files


def test_the_cli_moves_a_dataset_between_clouds_through_the_server(s3_emulator: Emulator, gcs_emulator: Emulator,
                                                                   tmp_path: Path) -> None:
    from fermion.testing import running_server

    def store_yaml(e: Emulator) -> str:
        return json.dumps(e.store(bucket()).model_dump(exclude_none=True))

    clouds = (f"clouds:\n  - name: aws\n    store: {store_yaml(s3_emulator)}\n"
              f"  - name: gcp\n    store: {store_yaml(gcs_emulator)}\n")
    files = make_files(tmp_path / "src", n=12)
    with running_server(tmp_path / "home", clouds) as server:
        def cli(*args: str) -> dict:
            return json.loads(server.cli("dataset", *args, "--json").stdout)

        first = cli("create", "tickets", str(tmp_path / "src"), "--cloud", "aws", "--encrypt")
        assert first["number"] == 1 and first["new"] and first["sent_bytes"] == sum(map(len, files.values()))
        assert cli("push", "tickets", str(tmp_path / "src"))["new"] is False  # nothing changed: no new version
        synced = cli("sync", "tickets", "--to", "gcp")
        assert synced["versions"] and synced["failed"] == []
        shown = cli("show", "tickets")
        assert shown["stores"]["aws"]["versions"] == [1] == shown["stores"]["gcp"]["versions"]
        assert cli("verify", "tickets")["ok"]
        # the master key is rotated: the dataset's sealed key is re-sealed with it, and still opens
        assert server.api().post("/secrets/rotate").status_code == 200
        pulled = cli("pull", "tickets@1", str(tmp_path / "out"), "--cloud", "gcp")
        assert pulled["fetched"] == len(files) and read_tree(tmp_path / "out") == files

        bad = server.cli("dataset", "push", "tickets", str(tmp_path / "nope"), check=False)
        said = " ".join((bad.stderr + bad.stdout).split())  # the message wraps at the terminal's width
        assert bad.returncode == 2 and "is not a folder" in said and "Traceback" not in said
        bad = server.cli("dataset", "sync", "tickets", "--to", "mars", check=False)
        assert bad.returncode != 0 and "unknown cloud 'mars'" in " ".join((bad.stderr + bad.stdout).split())


def test_a_dataset_is_created_from_a_bucket_url_and_from_an_http_url(s3_emulator: Emulator, tmp_path: Path) -> None:
    """`dataset create NAME URL` reads a bucket prefix (here moto's S3, with this machine's
    credentials for it) or an HTTP file, and pushes it like a folder; a bad URL leaves no dataset."""
    import functools
    import http.server

    from fermion.testing import running_server

    name = bucket()
    outside = open_store(s3_emulator.store(name, "raw/2026"), "someone-elses")
    rows = {"a.csv": b"text,label\nhello,greeting\n", "deep/b.jsonl": b'{"text": "bye"}\n' * 5000}
    for key, body in rows.items():
        outside.put(key, body)
    open_store(s3_emulator.store(name), "x").put("other/skipped.txt", b"outside the prefix")
    served = tmp_path / "web"
    served.mkdir()
    (served / "iris.csv").write_bytes(b"sepal,petal\n5.1,1.4\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    creds = ["--endpoint", s3_emulator.endpoint, "--source-option", "key=testing", "--source-option", "secret=testing"]
    try:
        with running_server(tmp_path / "home", "clouds:\n  - name: east\n") as server:
            made = json.loads(server.cli("dataset", "create", "raw", f"s3://{name}/raw/2026", *creds, "--json").stdout)
            assert made["files"] == 2 and made["size"] == sum(map(len, rows.values()))
            assert made["message"] == f"imported from s3://{name}/raw/2026"
            server.cli("dataset", "pull", "raw", str(tmp_path / "out"))
            assert read_tree(tmp_path / "out") == rows

            url = f"http://127.0.0.1:{web.server_address[1]}/iris.csv"
            made = json.loads(server.cli("dataset", "create", "iris", url, "--json").stdout)
            assert made["files"] == 1 and made["size"] == 20

            for bad_url, said in ((f"s3://nope-{name}", "no bucket or container"),
                                  (f"s3://{name}/empty", "holds no objects"),
                                  (url.replace("iris", "missing"), "answered HTTP 404"),
                                  ("ftp://host/x", "use s3://BUCKET")):
                bad = server.cli("dataset", "create", "broken", bad_url, *creds, check=False)
                text = " ".join((bad.stderr + bad.stdout).split())
                assert bad.returncode != 0 and said in text and "Traceback" not in text, text
            with server.api() as api:
                assert api.get("/datasets/broken").status_code == 404  # nothing half made
    finally:
        web.shutdown()
