"""Root of the ``fermion`` command; sub-commands live in their own modules."""

from __future__ import annotations

import sys
from importlib import import_module

import typer

from .. import __version__
from ..errors import FermionError
from ._output import print_error

# every command of the root, in the order `fermion --help` lists them: (name, module, attribute, is a group).
# A run imports and builds only the command it was asked for: building all of them (and importing
# their modules) cost every `fermion` start 0.15 s.
ENTRIES = (
    ("photon", "_photon", "photon_app", True),
    ("server", "_server", "server_app", True),
    ("backup", "_backup", "backup_app", True),
    ("gateway", "_gateway", "gateway_app", True),
    ("agent", "_agent", "agent_app", True),
    ("deployment", "_deploy", "deployment_app", True),
    ("cloud", "_deploy", "cloud_app", True),
    ("catalog", "_placement", "catalog_app", True),
    ("job", "_jobs", "job_app", True),
    ("dataset", "_datasets", "dataset_app", True),
    ("model", "_jobs", "model_app", True),
    ("pipeline", "_pipelines", "pipeline_app", True),
    ("secret", "_secrets", "secret_app", True),
    ("token", "_access", "token_app", True),
    ("user", "_access", "user_app", True),
    ("project", "_access", "project_app", True),
    ("whoami", "_access", "whoami", False),
    ("finetune", "_jobs", "finetune", False),
    ("compress", "_compress", "compress", False),
    ("optimize", "_placement", "optimize_cmd", False),
    ("deploy", "_deploy", "deploy", False),
    ("events", "_deploy", "events", False),
    ("login", "_platform", "login", False),
    ("audit", "_audit", "audit", False),
)


def version() -> None:
    """Print Fermion's version."""
    typer.echo(__version__)


def _group() -> None:
    pass


def build_app(only: str | None = None) -> typer.Typer:
    """The root command with every sub-command, or with ``only`` that one (when it is one)."""
    if only is not None and only != "version" and only not in {e[0] for e in ENTRIES}:
        only = None  # an option, a typo or nothing: the whole command, for its help or its error
    root = typer.Typer(
        name="fermion",
        help="Fermion: write AI services as Python classes (photons), serve them, and run them across clouds.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    root.callback()(_group)  # a root of one command is still a group: `fermion deploy ...`, not `fermion ...`
    for name, module, attribute, group in ENTRIES:
        if only not in (None, name):
            continue
        target = getattr(import_module(f"{__package__}.{module}"), attribute)
        if name == "model":
            import_module(f"{__package__}._compress")  # it adds `model compare`
        if group:
            root.add_typer(target, name=name)
        else:
            root.command(name)(target)
    if only in (None, "version"):
        root.command()(version)
    return root


def main() -> None:
    """Entry point: runs the CLI, turning Fermion errors into a message and an exit code."""
    try:
        # with standalone_mode off, click returns typer.Exit's code instead of exiting
        code = build_app(sys.argv[1] if len(sys.argv) > 1 else None)(standalone_mode=False)
    except FermionError as exc:
        print_error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print_error("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: click's message, no traceback
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            print_error(str(exc))
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
