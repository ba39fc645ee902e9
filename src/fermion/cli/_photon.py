"""``fermion photon``: run, build and inspect photons."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._output import console, print_json, print_table

REBUILD_HELP = ("Describe the photon's handlers afresh instead of taking the manifest of an earlier build of the "
                "same files (needed after changing handler types defined outside the photon's folder).")

photon_app = typer.Typer(help="Run, package and inspect photons.", no_args_is_help=True)

RefArg = Annotated[str, typer.Argument(help="'path/to/file.py:Class', 'package.module:Class' or a .photon archive")]


@photon_app.command("run")
def run(
    ref: RefArg,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind; 0 picks a free one.")] = 8080,
    port_file: Annotated[Path | None, typer.Option(help="Write the bound port here once listening.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    graceful_timeout: Annotated[float, typer.Option(help="Seconds to finish in-flight requests on SIGTERM.")] = 30.0,
    auth_secret_file: Annotated[Path | None, typer.Option(
        help="Require the secret in this file (read, then deleted) on every call but /healthz.")] = None,
) -> None:
    """Serve a photon over HTTP until Ctrl-C / SIGTERM."""
    from ..photon.runtime import run_photon

    raise typer.Exit(run_photon(ref, host=host, port=port, port_file=port_file, log_level=log_level,
                                graceful_timeout_s=graceful_timeout, auth_secret_file=auth_secret_file))


@photon_app.command("build")
def build(
    ref: Annotated[str, typer.Argument(help="'path/to/file.py:Class' or 'package.module:Class'")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Archive path (default: NAME.photon).")] = None,
    include: Annotated[list[str] | None, typer.Option(
        "--include", help="Pack this file even if ignored or credential-like; relative to the photon's folder (repeat)."
    )] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
    rebuild: Annotated[bool, typer.Option(help=REBUILD_HELP)] = False,
) -> None:
    """Package a photon and the folder around its file into a .photon archive.

    Honours .gitignore and .fermionignore; leaves credential-like files out (by name: Fermion homes and backups, keys,
    .env, kubeconfigs, tokens; by content: detect-secrets' rules) and says why, unless --include names them.
    """
    import warnings

    from rich.markup import escape

    from ..photon.runtime import load_photon_class
    from ..photon.runtime import build_archive
    from ._output import err_console

    def size(n: int) -> str:
        if n < 1024:
            return f"{n} B"
        return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.1f} MiB"

    out = output or Path(f"{load_photon_class(ref).photon_name()}.photon")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the same warnings are printed below, readably
        manifest, selection = build_archive(ref, out, include=include or [], cache=not rebuild)
    for message in selection.warnings():
        err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)
    if json_out:  # the manifest's keys as before, with what was packed and skipped (and why) beside them
        print_json({**manifest.model_dump(), "packed": selection.sizes, "skipped": selection.skipped,
                    "skipped_why": {rel: selection.reasons.get(rel) for rel in selection.skipped}})
        return
    console.print(f"[green]built[/] {out}  name={manifest.name}  entry={manifest.entry}  sha256={manifest.sha256[:16]}…")
    largest = sorted(selection.sizes.items(), key=lambda item: (-item[1], item[0]))
    rows = [(escape(rel), size(n)) for rel, n in largest[:20]]  # file names are not markup
    if len(largest) > 20:
        rows.append((f"… and {len(largest) - 20} more", size(sum(n for _, n in largest[20:]))))
    print_table("packed", ["file", "size"], rows)
    console.print(f"total: {len(largest)} files, {size(selection.total_bytes)}", highlight=False)
    if selection.skipped:  # every file left out, and why, so that nothing goes missing unsaid
        print_table("[yellow]skipped as secrets[/] (name one with --include to pack it)", ["file", "why"],
                    [(rel, selection.reasons.get(rel, "")) for rel in selection.skipped])
    print_table(
        None,
        ["handler", "method", "path", "batch", "stream"],
        [(n, h.method, h.path, h.batch or "", "yes" if h.stream else "") for n, h in manifest.handlers.items()],
    )


@photon_app.command("inspect")
def inspect_(
    archive: Annotated[Path, typer.Argument(help="A .photon archive.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show a .photon archive's manifest (after checking its entries are safe)."""
    from ..photon.runtime import read_manifest

    manifest = read_manifest(archive)
    if json_out:
        print_json(manifest.model_dump())
        return
    console.print(f"[bold]{manifest.name}[/]  entry={manifest.entry}  sha256={manifest.sha256}")
    console.print(f"requirements: {', '.join(manifest.requirements) or '-'}   resources: {manifest.resources or '-'}")
    print_table(
        "handlers",
        ["handler", "method", "path", "batch", "stream", "timeout"],
        [
            (n, h.method, h.path, h.batch or "", "yes" if h.stream else "", h.timeout_s or "")
            for n, h in manifest.handlers.items()
        ],
    )
    print_table("files", ["path", "sha256"], [(p, s[:16] + "…") for p, s in manifest.files.items()])
