"""Root of the ``fermion`` command; sub-commands live in their own modules."""

from __future__ import annotations

import sys

import typer

from .. import __version__
from ..errors import FermionError
from ._access import project_app, token_app, user_app, whoami
from ._audit import audit
from ._backup import backup_app
from ._compress import compress, model_compare
from ._datasets import dataset_app
from ._deploy import cloud_app, deploy, deployment_app, events, login
from ._gateway import gateway_app
from ._jobs import finetune, job_app, model_app
from ._output import print_error
from ._photon import photon_app
from ._placement import catalog_app, optimize_cmd
from ._secrets import secret_app
from ._server import server_app

app = typer.Typer(
    name="fermion",
    help="Fermion: write AI services as Python classes (photons), serve them, and run them across clouds.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(photon_app, name="photon")
app.add_typer(server_app, name="server")
app.add_typer(backup_app, name="backup")
app.add_typer(gateway_app, name="gateway")
app.add_typer(deployment_app, name="deployment")
app.add_typer(cloud_app, name="cloud")
app.add_typer(catalog_app, name="catalog")
app.add_typer(job_app, name="job")
app.add_typer(dataset_app, name="dataset")
app.add_typer(model_app, name="model")
app.add_typer(secret_app, name="secret")
app.add_typer(token_app, name="token")
app.add_typer(user_app, name="user")
app.add_typer(project_app, name="project")
app.command()(whoami)
app.command()(finetune)
app.command()(compress)
model_app.command("compare")(model_compare)
app.command("optimize")(optimize_cmd)
app.command()(deploy)
app.command()(events)
app.command()(login)
app.command()(audit)


@app.command()
def version() -> None:
    """Print Fermion's version."""
    typer.echo(__version__)


def main() -> None:
    """Entry point: runs the CLI, turning Fermion errors into a message and an exit code."""
    try:
        # with standalone_mode off, click returns typer.Exit's code instead of exiting
        code = app(standalone_mode=False)
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
