"""``fermion dataset …``: versioned datasets in the clouds' stores, sent and fetched through the server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UserInputError
from ._output import console, print_json, print_table
from ..sdk import Connection, Source, split_ref
from ._platform import bars, connect, progress_console

dataset_app = typer.Typer(help="Versioned datasets across the clouds' stores: push, pull, sync, verify, dedup.",
                          no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
CloudOpt = Annotated[str | None, typer.Option(help="The cloud whose store to use (default: the dataset's).")]


def _ref(ref: str) -> tuple[str, str | None]:
    return split_ref(ref)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _push(conn: Connection, name: str, path: Path, cloud: str | None, message: str, json_out: bool,
          cache: bool = True) -> None:
    version = conn.datasets.push(name, path, cloud=cloud, message=message, cache=cache, progress=bars)
    if json_out:
        print_json(version.to_json())
        return
    state = "new version" if version.new else "unchanged: the latest version holds these files already"
    console.print(f"{name} v{version.number} ({state}) on {version.cloud}: {version.files} files, "
                  f"{_size(version.size)}; sent {_size(version.sent_bytes)} in {version.sent_chunks} chunks, "
                  f"{_size(version.skipped_bytes)} were there already")


SourceArg = Annotated[str | None, typer.Argument(
    help="A folder, or a URL to import: s3://BUCKET/PREFIX, gs://..., az://..., file:///PATH, or http(s)://FILE.")]
EndpointOpt = Annotated[str | None, typer.Option(help="For a source URL: an S3- or GCS-compatible server to read it from.")]
SourceOptionOpt = Annotated[list[str] | None, typer.Option(
    "--source-option", help="For a source URL: KEY=VALUE for its client, e.g. anon=true (repeat).")]


@contextlib.contextmanager
def _fetched(source: str, endpoint: str | None, options: list[str] | None) -> Iterator[Source]:
    """The folder to push from ``source``: a folder as it is (and its plan cache is used), or a URL's
    objects downloaded into a temporary one, with this machine's credentials for it (the server
    never sees them), removed afterwards (see fermion.sdk.fetched)."""
    from ..sdk import fetched

    bucket = "://" in source and not source.startswith(("http://", "https://"))  # an http(s) file needs neither
    with fetched(source, bars, endpoint=endpoint if bucket else None,
                 options=(key_values(options, "--source-option") or None) if bucket else None) as got:
        yield got


def key_values(options: list[str] | None, flag: str) -> dict[str, Any]:
    """``flag``'s KEY=VALUE options as a mapping (true and false as booleans), or a usage error."""
    opts: dict[str, Any] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserInputError(f"{flag} {item!r} is not KEY=VALUE")
        opts[key] = {"true": True, "false": False}.get(value.lower(), value)
    return opts


def store_config(url: str, endpoint: str | None, options: list[str] | None, flag: str) -> Any:
    """A StoreConfig from the command line's URL, --endpoint and ``flag`` KEY=VALUE options (true
    and false as booleans), or a usage error that names the bad part."""
    from ..data import StoreConfig

    opts = key_values(options, flag)
    try:
        return StoreConfig(url=url, endpoint=endpoint, options=opts)
    except ValueError as exc:
        raise UserInputError(f"invalid store URL {url!r}: {exc}") from None


@dataset_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The dataset's name (lowercase letters, digits, '-').")],
    source: SourceArg = None,
    cloud: Annotated[str | None, typer.Option(help="The cloud whose store holds it first (default: the first cloud).")] = None,
    encrypt: Annotated[bool, typer.Option("--encrypt", help="Encrypt it in every store; the server keeps the key.")] = False,
    project: Annotated[str | None, typer.Option(help="The project (default: your token's, or default).")] = None,
    description: Annotated[str, typer.Option(help="What the data is.")] = "",
    message: Annotated[str, typer.Option("-m", "--message", help="A note for the first version.")] = "",
    endpoint: EndpointOpt = None,
    source_option: SourceOptionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a dataset, and push a folder or a URL's objects as its first version."""
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(_fetched(source, endpoint, source_option)) if source is not None else None
        conn = connect()  # the source is read first: a bad one leaves no empty dataset behind
        out = conn.datasets.create(name, cloud=cloud, encrypt=encrypt, project=project, description=description)
        if not json_out:
            console.print(f"dataset {name} created on {out['cloud']}{' (encrypted)' if encrypt else ''}")
        if folder is not None:
            _push(conn, name, folder.folder, cloud, message or folder.note, json_out, cache=folder.local)
        elif json_out:
            print_json(out)


@dataset_app.command("push")
def push(
    name: Annotated[str, typer.Argument(help="The dataset.")],
    source: Annotated[str, typer.Argument(help="The folder (or a URL, as for create) that becomes the next version.")],
    cloud: CloudOpt = None,
    message: Annotated[str, typer.Option("-m", "--message", help="A note for this version.")] = "",
    endpoint: EndpointOpt = None,
    source_option: SourceOptionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Push a folder as the next version: only chunks the store lacks are sent; an interrupted
    push sends the rest when run again."""
    with _fetched(source, endpoint, source_option) as got:
        _push(connect(), name, got.folder, cloud, message or got.note, json_out, cache=got.local)


@dataset_app.command("pull")
def pull(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (a number or a digest prefix).")],
    dest: Annotated[Path, typer.Argument(help="The folder to write the files to.")],
    cloud: CloudOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a version's files to a folder; files already there and equal are kept."""
    name, _ = _ref(ref)
    out = connect().datasets.pull(ref, dest, cloud=cloud, progress=bars)
    if json_out:
        print_json(out.to_json())
    else:
        console.print(f"{name} v{out.number} → {dest}: {out.fetched} files fetched, {out.kept} already there")


@dataset_app.command("sync")
def sync_cmd(
    ref: Annotated[str, typer.Argument(help="NAME (every version) or NAME@VERSION.")],
    to: Annotated[str, typer.Option("--to", help="The cloud whose store should hold it.")],
    source: Annotated[str | None, typer.Option("--from", help="Prefer this cloud's store as the source.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Copy versions to another cloud's store: only the chunks it lacks, each from the nearest
    store that holds it intact (so a sync also repairs what verify found)."""
    name, _ = _ref(ref)
    result = connect().datasets.sync(ref, to, source=source, progress=bars)
    if json_out:
        print_json(result)
        return
    console.print(f"{name} → {to}: {result['chunks_sent']} of {result['chunks']} chunks sent "
                  f"({_size(result['bytes_sent'])}), {_size(result['bytes_skipped'])} there already, "
                  f"in {result['seconds']:.1f}s; "
                  f"{len(result['versions'])} versions there now")
    if result["failed"]:
        console.print(f"[red]{len(result['failed'])} chunks no store holds intact[/red], e.g. {result['failed'][0]}")
        raise typer.Exit(1)


@dataset_app.command("list")
def list_cmd(json_out: JsonOpt = False) -> None:
    """Every dataset you can see."""
    rows = connect().datasets()
    if json_out:
        print_json([r.to_json() for r in rows])
        return
    print_table("datasets", ["name", "project", "cloud", "versions", "files", "size", "encrypted"],
                [[r.name, r.project, r.cloud, r.versions, r.files, _size(r.size), "yes" if r.encrypted else ""]
                 for r in rows])


@dataset_app.command("show")
def show(name: Annotated[str, typer.Argument(help="The dataset.")], json_out: JsonOpt = False) -> None:
    """A dataset's versions, and which clouds' stores hold each."""
    d = connect().datasets.get(name)
    if json_out:
        print_json(d.to_json())
        return
    held = {cloud: set(info.get("versions", [])) for cloud, info in d.stores.items()}
    console.print(f"[bold]{d.name}[/bold] · project {d.project} · home {d.cloud}"
                  f"{' · encrypted' if d.encrypted else ''}{' · ' + d.description if d.description else ''}")
    print_table("versions", ["version", "digest", "files", "size", "stores", "message"],
                [[v.number, v.digest[:12], v.files, _size(v.size),
                  ", ".join(c for c in held if v.number in held[c]) or "none", v.message] for v in d.versions])
    for cloud, info in d.stores.items():
        if "error" in info:
            console.print(f"[red]{cloud}[/red]: {info['error']}")


@dataset_app.command("diff")
def diff_cmd(
    name: Annotated[str, typer.Argument(help="The dataset.")],
    a: Annotated[str, typer.Argument(help="The older version.")],
    b: Annotated[str, typer.Argument(help="The newer version (default: latest).")] = "latest",
    json_out: JsonOpt = False,
) -> None:
    """Files added, removed and changed between two versions."""
    d = connect().datasets.diff(name, a, b)
    if json_out:
        print_json(d)
        return
    console.print(f"{name} v{d['from_version']} → v{d['to_version']}: {len(d['added'])} added, "
                  f"{len(d['removed'])} removed, {len(d['changed'])} changed, {d['unchanged']} unchanged; "
                  f"the newer adds {_size(d['new_chunk_bytes'])} of new chunks")
    for mark, key in (("+", "added"), ("-", "removed"), ("~", "changed")):
        for path in d[key][:50]:
            console.print(f"  {mark} {path}", markup=False)


@dataset_app.command("verify")
def verify_cmd(
    ref: Annotated[str, typer.Argument(help="NAME (every version) or NAME@VERSION.")],
    cloud: Annotated[str | None, typer.Option(help="Only this cloud's store (default: every store that holds it).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Read back every chunk and check it; corrupt ones are named and moved aside (sync repairs them)."""
    name, _ = _ref(ref)
    out = connect().datasets.verify(ref, cloud=cloud)
    if json_out:
        print_json(out)
    else:
        for c, r in out["stores"].items():
            if "error" in r:
                console.print(f"[red]{c}[/red]: {r['error']}")
                continue
            status = "[green]ok[/green]" if r["ok"] else "[red]damaged[/red]"
            console.print(f"{c}: {status} · {r['chunks']} chunks, {_size(r['bytes'])} read back")
            for kind in ("missing", "corrupt"):
                for sha, files in r[kind].items():
                    console.print(f"  {kind} chunk {sha} (in {', '.join(files[:3])}{'…' if len(files) > 3 else ''})",
                                  markup=False)
        if not out["ok"]:
            console.print(f"repair: `fermion dataset sync {name} --to CLOUD` copies them back from a store that holds them")
    if not out["ok"]:
        raise typer.Exit(1)


@dataset_app.command("dedup")
def dedup(
    ref: Annotated[str, typer.Argument(help="NAME (latest version) or NAME@VERSION.")],
    threshold: Annotated[float, typer.Option(help="Jaccard similarity over which rows are near duplicates.")] = 0.85,
    column: Annotated[str | None, typer.Option(help="For csv/jsonl: compare this column only.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Remove exact and near-duplicate rows (MinHash) of text and tabular files, as a new version."""
    name, _ = _ref(ref)
    with progress_console.status(f"deduplicating {ref}…"):
        out = connect().datasets.dedup(ref, threshold=threshold, column=column)
    if json_out:
        print_json(out)
        return
    r = out["report"]
    console.print(f"{name} v{out['number']}: {r['rows_before']} rows → {r['rows_after']} "
                  f"({r['exact_removed']} exact and {r['near_removed']} near duplicates removed, threshold {r['threshold']})")
    for ex in r["examples"][:5]:
        console.print(f"  removed {ex['removed']!r}\n     like {ex['kept']!r}", markup=False)


@dataset_app.command("delete")
def delete(
    ref: Annotated[str, typer.Argument(help="NAME (the whole dataset) or NAME@VERSION.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete a version, or the dataset, from every store; unneeded chunks are collected."""
    _ref(ref)
    if not yes and not typer.confirm(f"delete {ref} from every store?"):
        raise typer.Abort()
    out = connect().datasets.delete(ref)
    if json_out:
        print_json(out)
        return
    freed = sum(f.get("bytes", 0) for f in out["freed"].values())
    console.print(f"deleted {ref}: {len(out['deleted'])} versions, {_size(freed)} freed")
