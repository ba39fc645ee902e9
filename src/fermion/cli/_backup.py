"""``fermion backup``: a consistent backup of the state store (and what it needs: the photon
archives, the secret master key, the admin credentials), and the restore of one."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..store import Backup

backup_app = typer.Typer(
    help="Back up the server's state (every table, the photon archives, the secret master key) to one file, "
         "or restore one. Run it on the server's machine, with its FERMION_HOME (and --db, if it uses one).",
    no_args_is_help=True)

DbOpt = Annotated[str | None, typer.Option(
    envvar="FERMION_DB_URL", help="The server's database URL (default: SQLite in $FERMION_HOME).")]
KEY_FILES = ("master.key", "master.key.old")
UnsealedOpt = Annotated[bool, typer.Option(
    "--unsealed", help="Accept a backup made before backups were sealed: only one you made and kept yourself.")]


def _say(message: str) -> None:
    print(f"fermion: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _told(what: str, url: str) -> Iterator[None]:
    """A disk or database error during ``what``: one line with its cause, never a traceback."""
    from sqlalchemy.exc import DBAPIError

    from ..errors import FermionError
    from ..store import db_error_text, display_url, explain_db_error

    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise FermionError(f"{what} failed: {exc.strerror or exc}{where}") from None
    except DBAPIError as exc:
        known = explain_db_error(exc)
        raise FermionError(f"{what} failed: the database {display_url(url)} answered: {db_error_text(exc)}",
                           hint=known[1] if known else "is it running, and is --db (or FERMION_DB_URL) the server's?"
                           ) from None


def _db_url(db: str | None, home: Path) -> str:
    from ..store import default_db_url
    from ._server import check_db_url

    if db is not None:
        check_db_url(db)
    return db or default_db_url(home)


ToOpt = Annotated[str | None, typer.Option(
    "--to", help="An object store to keep the backup in, sealed with $FERMION_BACKUP_PASSPHRASE: s3://BUCKET/PREFIX, "
                 "gs://..., az://..., file:///PATH.")]
FromOpt = Annotated[str | None, typer.Option("--from", help="The object store the backups were sent to (as for --to).")]
EndpointOpt = Annotated[str | None, typer.Option(help="For --to/--from: an S3- or GCS-compatible server.")]
StoreOptionOpt = Annotated[list[str] | None, typer.Option(
    "--store-option", help="For --to/--from: KEY=VALUE for the store's client, e.g. key=... (repeat).")]


def _store(url: str, endpoint: str | None, options: list[str] | None):  # noqa: ANN202 - an ObjectStore
    from ..data import ObjectStore
    from ._datasets import store_config

    return ObjectStore(store_config(url, endpoint, options, "--store-option"), "backups")


@backup_app.command("create")
def create(
    file: Annotated[Path | None, typer.Argument(help="The backup file to write (or --to a store).")] = None,
    to: ToOpt = None,
    endpoint: EndpointOpt = None,
    store_option: StoreOptionOpt = None,
    db: DbOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.")] = False,
) -> None:
    """Write a backup to FILE, or send it to an object store (--to), sealed (encrypted and
    authenticated) with $FERMION_BACKUP_PASSPHRASE (asked for on a terminal); safe while the server runs.

    Every table is read in one snapshot: deployments, jobs and their history, the registry, the
    datasets' versions (their chunks stay in the clouds' stores), pipelines; with the photon
    archives, the master key that opens every stored secret and the admin credentials (cli.json)."""
    import tempfile

    from .._files import write_atomic
    from ..errors import UserInputError
    from ..store import backup_passphrase, seal_backup_file, send_backup

    if (file is None) == (to is None):
        raise UserInputError("give a backup FILE, or --to STORE_URL", hint="fermion backup create --to s3://bucket/fermion")
    if file is not None:
        if file.exists() and not force:
            raise UserInputError(f"{file} exists", hint="choose another file name, or add --force to replace it")
        if not file.parent.is_dir():
            raise UserInputError(f"cannot write {file}: the folder {file.parent} does not exist")
    passphrase = backup_passphrase(ask=True, confirm=True)  # refused before any work when it is missing
    store = _store(to, endpoint, store_option) if to is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "state.fbk"
        described = _create(local, db)
        if store is None:
            assert file is not None
            with _told("the backup", str(file)):
                write_atomic(file, seal_backup_file(local.read_bytes(), passphrase), 0o600, durable=True)
            _say(f"backup written to {file}, sealed with the passphrase (mode 0600): {described}")
            return
        assert to is not None
        with _told("sending the backup", to):
            name, size = send_backup(store, local.read_bytes(), passphrase)
    _say(f"sealed and sent to {to.rstrip('/')}/{name} ({size / 1e6:.2f} MB; {described}); "
         "restore it with `fermion backup restore --from URL` and the same passphrase")


def _create(file: Path, db: str | None) -> str:
    """A plain backup into ``file`` (a private temporary folder's): what it holds, in words."""
    from ..config import fermion_home
    from ..security import MASTER_KEY_ENV
    from ..store import create_backup
    from ._platform import CREDENTIALS

    home = fermion_home()
    url = _db_url(db, home)
    files: dict[str, Path] = {}
    if not os.environ.get(MASTER_KEY_ENV):
        files.update({name: home / name for name in KEY_FILES if (home / name).is_file()})
    if (home / CREDENTIALS).is_file():
        files[CREDENTIALS] = home / CREDENTIALS
    with _told("the backup", url):
        summary = create_backup(url, file, files=files)
    for note in summary.notes:
        _say(f"warning: {note}")
    if os.environ.get(MASTER_KEY_ENV):
        _say(f"the secret master key comes from ${MASTER_KEY_ENV} and is not in the backup: keep it, stored "
             "secrets open only with it")
    elif "master.key" not in files:
        _say(f"warning: no master key in {home}: stored secrets in this backup will not open")
    return (f"it holds {'the master key, ' if 'master.key' in files else ''}the admin credentials and "
            f"{summary.describe()}")


@backup_app.command("restore")
def restore(
    file: Annotated[Path | None, typer.Argument(help="The backup file (from `fermion backup create`).")] = None,
    from_: FromOpt = None,
    name: Annotated[str | None, typer.Option(help="With --from: this backup (default: the newest).")] = None,
    endpoint: EndpointOpt = None,
    store_option: StoreOptionOpt = None,
    db: DbOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace a database that holds data (a SQLite file is kept aside, not deleted).")] = False,
    unsealed: UnsealedOpt = False,
) -> None:
    """Restore a backup into a stopped server's home (refuses a database that holds data unless --force):
    a FILE, or the newest backup of a store (--from; opened with $FERMION_BACKUP_PASSPHRASE).

    Its checksums are verified first; then every table, the photon archives, the master key and
    cli.json are put back (files they replace are kept aside). Then `fermion server start` (with the
    clouds.yaml of the backup's server: their stores hold the datasets' and models' chunks): it
    re-adopts the replicas and job attempts still running, stops those no row knows, and starts
    what the deployments lack."""
    import tempfile

    from ..errors import UserInputError
    from ..store import backup_passphrase, fetch_backup

    if (file is None) == (from_ is None):
        raise UserInputError("give a backup FILE, or --from STORE_URL")
    if file is not None:
        with _opened(file, unsealed) as local:
            _restore(local, file, db, force)
        return
    assert from_ is not None
    passphrase = backup_passphrase(ask=True)
    with _told("fetching the backup", from_):
        picked, data = fetch_backup(_store(from_, endpoint, store_option), passphrase, name)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "state.fbk"
        local.write_bytes(data)
        _say(f"fetched {picked} from {from_}")
        _restore(local, Path(picked), db, force)


@contextlib.contextmanager
def _opened(file: Path, unsealed: bool) -> Iterator[Path]:
    """The plain backup inside sealed ``file``, in a private temporary folder for as long as it is
    used; an unsealed file (made before backups were sealed) only when the user vouches for it."""
    import tempfile

    from .._files import write_atomic
    from ..errors import UserInputError
    from ..store import backup_passphrase, is_sealed_backup, unseal_backup_file

    try:
        blob = file.read_bytes()
    except FileNotFoundError:
        raise UserInputError(f"no backup file {file}") from None
    except OSError as exc:
        raise UserInputError(f"cannot read {file}: {exc.strerror or exc}") from None
    if not is_sealed_backup(blob):
        if not unsealed:
            raise UserInputError(f"{file} is not sealed: nothing proves who wrote it (anyone who could write the file "
                                 "could have added rows, a token say)",
                                 hint="if you made it with an older Fermion and it never left your hands, add --unsealed")
        yield file
        return
    data = unseal_backup_file(blob, backup_passphrase(ask=True), file.name)
    with tempfile.TemporaryDirectory() as tmp:  # mode 0700: the plain backup holds the master key
        local = Path(tmp) / "state.fbk"
        write_atomic(local, data, 0o600)
        yield local


@backup_app.command("list")
def list_backups(
    from_: Annotated[str, typer.Option("--from", help="The object store the backups were sent to.")],
    endpoint: EndpointOpt = None,
    store_option: StoreOptionOpt = None,
) -> None:
    """The sealed backups in an object store, oldest first."""
    from ..store import listed_backups

    with _told("listing the backups", from_):
        names = listed_backups(_store(from_, endpoint, store_option))
    for key, size in names.items():
        print(f"{key}\t{size}")
    if not names:
        _say(f"no backup in {from_}")


def _restore(file: Path, shown: Path, db: str | None, force: bool) -> None:
    from ..store import Backup, display_url, restore_backup
    from ._home import lock_home_exclusive, writable_home

    backup = Backup(file, shown_as=shown)  # verified before anything is touched
    home = writable_home()
    url = _db_url(db, home)
    lock = lock_home_exclusive(home)
    try:
        with _told("the restore", url):
            summary = restore_backup(backup, url, photon_store=home / "photon-store", force=force)
            notes = summary.notes + _restore_files(backup, home)
    finally:
        os.close(lock)
    for note in notes:
        _say(note)
    taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary.created_at))
    _say(f"restored {shown} (taken {taken}) into {display_url(url)}: {summary.describe()}")
    _say("start the server with `fermion server start`")


@backup_app.command("verify")
def verify(file: Annotated[Path, typer.Argument(help="The backup file to check.")],
           unsealed: UnsealedOpt = False) -> None:
    """Open a backup with its passphrase, check every checksum and say what it holds (changes nothing)."""
    from ..store import Backup

    with _opened(file, unsealed) as local:
        summary = Backup(local, shown_as=file).summary()
    taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary.created_at))
    how = "intact, but unsealed (not authenticated)" if local == file else "authentic and intact"
    print(f"{file}: {how}; taken {taken} from {summary.source}: {summary.describe()}; "
          f"files: {', '.join(summary.files) or 'none'}")


def _restore_files(backup: Backup, home: Path) -> list[str]:
    """The backup's master key(s) and cli.json into ``home``; what differed is kept aside."""
    from .._files import write_atomic
    from ..security import HEAD_FILE as AUDIT_HEAD_FILE
    from ..security import MASTER_KEY_ENV
    from ..store import keep_aside
    from ._platform import CREDENTIALS

    notes = []
    if not backup.has_file("master.key"):
        notes.append(f"warning: the backup holds no master key (its server took it from ${MASTER_KEY_ENV}): start the "
                     f"server with that same ${MASTER_KEY_ENV}, or stored secrets will not open")
    for name in (*KEY_FILES, CREDENTIALS):
        target = home / name
        if not backup.has_file(name):
            if name == "master.key.old" and target.exists() and backup.has_file("master.key"):
                # a rotation left unfinished here concerns the database just replaced
                notes.append(f"kept {name} as {keep_aside(target)}")
            continue
        data = backup.read(f"files/{name}")
        if target.exists() and target.read_bytes() == data:
            continue
        if target.exists():
            notes.append(f"kept the previous {name} as {keep_aside(target)}")
        write_atomic(target, data, 0o600, durable=True)
        why = " (the key that opens the backup's secrets)" if name == "master.key" else ""
        notes.append(f"{name} restored{why}")
    head = home / AUDIT_HEAD_FILE
    if head.exists():  # it names the newest audit record of the database just replaced, not the backup's
        notes.append(f"kept the audit log's head as {keep_aside(head)}: the restored log ends where the backup's "
                     "did, and the server anchors it anew")
    env_key = os.environ.get(MASTER_KEY_ENV, "").strip()
    if env_key and backup.has_file("master.key") and env_key != backup.read("files/master.key").decode().strip():
        notes.append(f"warning: ${MASTER_KEY_ENV} is set and is not the backup's key: the server would use it and "
                     f"stored secrets would not open; unset it (the backup's key is in {home / 'master.key'})")
    return notes
