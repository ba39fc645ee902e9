"""``fermion job …``, ``fermion finetune`` and ``fermion model …``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._output import EGRESS_HELP, console, print_json, print_table
from ..sdk import Code, Connection, Job
from ._platform import bars, connect, progress_console

job_app = typer.Typer(help="Run and inspect jobs (commands and fine-tunes) on the clouds.", no_args_is_help=True)
model_app = typer.Typer(help="The model registry: versions, metrics, lineage, stages.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ProjectOpt = Annotated[str | None, typer.Option(help="The project (default: your token's, or default).")]


def _follow(conn: Connection, name: str, timeout: float, show: bool = True) -> Job:
    """Wait for the job to end, with a progress bar of its training steps when it reports them
    (none with ``show`` off: the output is then JSON for a script)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False, disable=not show) as progress:
        task = progress.add_task(name, total=None, info="")

        def shown(job: Job) -> None:
            steps = [m for m in job.metrics if "train_loss" in m and "step" in m]
            evals = [m for m in job.metrics if "eval_accuracy" in m]
            info = f"{job.status} attempt {len(job.attempts)}"
            if steps:
                info += f" · step {steps[-1]['step']} loss {steps[-1]['train_loss']:.3f}"
            if evals:
                info += f" · eval acc {evals[-1]['eval_accuracy']:.3f}"
            phases = [m for m in job.metrics if "phase" in m]  # a compression's steps and measurements
            if phases:
                info += f" · {phases[-1]['phase']} {phases[-1].get('variant', '')}"
            progress.update(task, info=info)

        return conn.jobs.wait(name, timeout, on_update=shown)


def _submit(conn: Connection, spec: dict[str, Any], follow: bool, timeout: float, json_out: bool) -> None:
    job = conn.jobs.submit(spec)
    _ended(conn, job, follow, timeout, json_out)


def _ended(conn: Connection, job: Job, follow: bool, timeout: float, json_out: bool) -> None:
    if follow:
        job = _follow(conn, job.name, timeout, show=not json_out)
    if json_out:
        print_json(job.to_json())
    else:
        _show_job(job)
    if job.status == "FAILED":
        raise typer.Exit(1)


@job_app.command("run")
def job_run(
    command: Annotated[list[str] | None, typer.Argument(help="The command, after --")] = None,
    name: Annotated[str | None, typer.Option(help="Job name.")] = None,
    spec: Annotated[Path | None, typer.Option(help="A job spec YAML (name, command, resources, ...).")] = None,
    spot: Annotated[bool, typer.Option(help="Run on spot capacity; preempted attempts resume elsewhere.")] = False,
    cpus: Annotated[float, typer.Option(help="CPUs per attempt.")] = 1,
    memory_gb: Annotated[float, typer.Option(help="Memory per attempt in GB.")] = 1,
    egress: Annotated[bool, typer.Option(help=EGRESS_HELP)] = False,
    cloud: Annotated[list[str] | None, typer.Option(help="Allowed cloud (repeat).")] = None,
    workers: Annotated[int, typer.Option(help="torch distributed workers (torchrun, gloo on CPU).")] = 1,
    max_restarts: Annotated[int, typer.Option(help="Retries after the job's own failures.")] = 2,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeat).")] = None,
    data: Annotated[list[str] | None, typer.Option(
        help="dataset:NAME[@VERSION] (repeat): fetched into $FERMION_DATA_DIR/NAME on the job's cloud.")] = None,
    workdir: Annotated[Path | None, typer.Option(
        help="A folder to send with the job (.gitignore, .fermionignore and secrets left out): the command runs "
             "in a copy of it on the job's cloud.")] = None,
    project: ProjectOpt = None,
    follow: Annotated[bool, typer.Option(help="Wait for the job to end, showing progress.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to follow.")] = 3600,
    json_out: JsonOpt = False,
) -> None:
    """Run a command as a job: `fermion job run --name train --workdir . -- python train.py`, or `--spec job.yaml`."""
    from ..errors import UserInputError

    body: dict[str, Any] = {}
    if spec is not None:
        import yaml

        try:
            body = yaml.safe_load(spec.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserInputError(f"cannot read job spec {spec}: {exc}") from exc
        if not isinstance(body, dict):
            raise UserInputError(f"job spec {spec} must be a mapping of job fields")
    env_map = dict(item.split("=", 1) for item in env or [] if "=" in item)
    bad = [d for d in data or [] if not d.startswith("dataset:")]
    if bad:
        raise UserInputError(f"--data {bad[0]!r} is not a dataset", hint="use --data dataset:NAME or dataset:NAME@VERSION")
    datasets = [d.removeprefix("dataset:") for d in data or []]
    flags = {"name": name, "command": command or None, "clouds": cloud or None, "env": env_map or None,
             "datasets": datasets or None,
             "project": project}
    body.update({k: v for k, v in flags.items() if v is not None})
    body.setdefault("resources", {"cpus": cpus, "memory_gb": memory_gb})
    if egress:
        body["resources"]["egress"] = True
    for key, value, default in (("workers", workers, 1), ("max_restarts", max_restarts, 2), ("spot", spot, False)):
        if value != default or key not in body:
            body[key] = value
    if not body.get("name"):
        raise UserInputError("a job needs a name", hint="--name NAME, or name: in the spec")
    folder = workdir if workdir is not None else body.pop("workdir", None)
    if folder is not None and workdir is None and spec is not None:
        folder = spec.parent / str(folder)  # a spec's workdir is relative to the spec
    body.pop("workdir", None)
    conn = connect()
    if folder is not None:
        body["code"] = ship_code(conn, Path(folder), body.get("project"), json_out).digest
    else:
        given = body.get("command")
        command = [a for a in given if isinstance(a, str)] if isinstance(given, list) else []
        local = next((a for a in command if not a.startswith("-") and not Path(a).is_absolute() and _is_file(a)), None)
        if local is not None:  # it would not be there: the job runs on another machine
            raise UserInputError(f"the command names {local}, a file of this folder, but the job runs on its cloud, "
                                 "where only what is sent with it is", hint=_send_hint(command, local))
    _submit(conn, body, follow, timeout, json_out)


def _is_file(arg: str) -> bool:
    """Whether ``arg`` names a file here; a string no path can be (too long, a NUL byte: a script
    given to -c, say) names none."""
    try:
        return Path(arg).is_file()
    except (OSError, ValueError):
        return False


def _send_hint(command: list[str], local: str) -> str:
    """How to send the file ``local`` with the job: this folder, or (when the file is in a
    sub-folder) that folder alone, with the command naming the file from there."""
    import shlex

    from ..errors import shorten

    hint = "send this folder with it: --workdir ."
    folder = Path(local).parent
    if folder != Path("."):
        inside = [Path(a).name if a == local else a for a in command]
        hint += f" (or only {folder}, if the command needs nothing else: --workdir {shlex.quote(str(folder))} -- " \
                f"{shorten(shlex.join(inside), 200)})"
    return hint


def ship_code(conn: Connection, root: Path, project: str | None, quiet: bool = False) -> Code:
    """Send ``root``'s sources as a job's code (through the SDK), and say what went."""
    code = conn.ship_code(root, project, progress=bars)
    if not quiet:
        skipped = f"; left out as secrets: {', '.join(code.left_out)}" if code.left_out else ""
        progress_console.print(f"code {code.digest[:12]}: {code.files} files, {code.size} bytes "
                               f"({code.sent_bytes} sent), kept in the stores of {', '.join(code.stores)}{skipped}")
    return code


def finetune(
    name: Annotated[str, typer.Option(help="Job name (and, by default, the registered model's name).")],
    data: Annotated[str, typer.Option(help="Training data: .csv (text,label) or .jsonl; a path, or a file of a "
                                           "dataset version: dataset:NAME[@VERSION]/PATH.")],
    eval_data: Annotated[str | None, typer.Option(help="Evaluation data (the same forms); default: 20% held out.")] = None,
    base: Annotated[str | None, typer.Option(
        help="A model folder, or a registered model NAME[:VERSION]; default: the shipped MiniLM. "
             "Hugging Face Hub names are refused: jobs download nothing.")] = None,
    task: Annotated[str, typer.Option(help="Only 'classification' for now.")] = "classification",
    method: Annotated[str, typer.Option(help="lora or full.")] = "lora",
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Examples per batch.")] = 16,
    grad_accum: Annotated[int, typer.Option(help="Batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 1e-3,
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
    checkpoint_every: Annotated[int, typer.Option(help="Optimizer steps between checkpoints.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    model_name: Annotated[str | None, typer.Option(help="Registry name of the result.")] = None,
    cloud: Annotated[list[str] | None, typer.Option(help="Allowed cloud (repeat).")] = None,
    cpus: Annotated[float, typer.Option(help="CPUs per attempt.")] = 1,
    max_restarts: Annotated[int, typer.Option(help="Retries after the job's own failures.")] = 1,
    project: ProjectOpt = None,
    follow: Annotated[bool, typer.Option(help="Wait, showing the training curve.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to follow.")] = 3600,
    json_out: JsonOpt = False,
) -> None:
    """Fine-tune a transformers encoder for classification as a job; the result is registered."""
    from ..errors import UserInputError

    if task != "classification":
        raise UserInputError(f"task {task!r} is not supported", hint="use --task classification")
    conn = connect()
    job = conn.finetune(name, data, eval_data=eval_data, base=base, method=method, epochs=epochs,
                        batch_size=batch_size, grad_accum=grad_accum, lr=lr, precision=precision,
                        checkpoint_every=checkpoint_every, seed=seed, model_name=model_name, clouds=cloud, cpus=cpus,
                        max_restarts=max_restarts, project=project, wait=False, progress=bars)
    _ended(conn, job, follow, timeout, json_out)


def _show_job(job: Job) -> None:
    colour = {"SUCCEEDED": "green", "FAILED": "red", "RUNNING": "cyan"}.get(job.status, "yellow")
    console.print(f"[bold]{job.name}[/] ({job.kind}) [{colour}]{job.status}[/] — {job.reason}")
    if job.result:
        console.print(f"result: {job.result}")
    print_table("attempts", ["#", "cloud", "state", "exit", "reason"],
                [(a.number, a.cloud, a.state, a.exit_code, a.reason) for a in job.attempts])
    # per epoch, the last word: an attempt resumed from a checkpoint before an epoch's end evaluates it again
    # (a job's own metrics.jsonl may hold any of these, or none: a missing one shows as "-")
    evals = list({m.get("epoch"): m for m in job.metrics if "eval_accuracy" in m}.values())
    if evals:
        print_table("training curve (per epoch)", ["epoch", "step", "eval loss", "accuracy", "macro F1"],
                    [(m.get("epoch", "-"), m.get("step", "-"), _number(m.get("eval_loss"), 4),
                      _number(m.get("eval_accuracy"), 3), _number(m.get("eval_macro_f1"), 3)) for m in evals])


def _number(value: object, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


@job_app.command("list")
def job_list(json_out: JsonOpt = False) -> None:
    """All jobs."""
    jobs = connect().jobs()
    if json_out:
        print_json([j.to_json() for j in jobs])
        return
    print_table("jobs", ["name", "kind", "status", "attempts", "restarts", "reason"],
                [(j.name, j.kind, j.status, len(j.attempts), f"{j.restarts}/{j.max_restarts}",
                  j.reason) for j in jobs])


@job_app.command("status")
def job_status(name: str, json_out: JsonOpt = False) -> None:
    """A job's attempts, its training curve and result."""
    job = connect().jobs.get(name)
    if json_out:
        print_json(job.to_json())
    else:
        _show_job(job)


@job_app.command("logs")
def job_logs(name: str, tail: Annotated[int, typer.Option(help="Lines per attempt.")] = 100) -> None:
    """Each attempt's log."""
    for attempt, text in connect().jobs.logs(name, tail).items():
        console.rule(attempt)
        console.print(text, markup=False, highlight=False)


@job_app.command("cancel")
def job_cancel(name: str) -> None:
    """Stop a job's running attempt and mark it cancelled."""
    job = connect().jobs.cancel(name)
    console.print(f"{name}: {job.status}")


@model_app.command("list")
def model_list(json_out: JsonOpt = False) -> None:
    """Every model version."""
    rows = connect().models()
    if json_out:
        print_json([m.to_json() for m in rows])
        return
    print_table("models", ["name", "version", "stage", "accuracy", "baseline", "job", "base model"],
                [(m.name, m.version, m.stage, f"{m.metrics.get('final', {}).get('accuracy', 0):.3f}",
                  f"{m.metrics.get('baseline', {}).get('accuracy', 0):.3f}", m.lineage.get("job"),
                  Path(str(m.lineage.get("base_model", ""))).name) for m in rows])


@model_app.command("show")
def model_show(ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION")], json_out: JsonOpt = False) -> None:
    """One version with its metrics and lineage."""
    m = connect().models.get(ref)
    if json_out:
        print_json(m.to_json())
        return
    from ._compress import show_variant, show_variants

    console.print(f"[bold]{m.ref}[/] stage={m.stage} artifact={m.artifact_uri}")
    print_table("lineage", ["key", "value"], sorted(m.lineage.items()))
    if m.metrics.get("report"):  # a compressed variant: its measured report
        show_variant(m.to_json())
    else:
        print_table("metrics", ["key", "value"], sorted((k, v) for k, v in m.metrics.items()))
    if m.variants:
        show_variants(m.variants)


@model_app.command("promote")
def model_promote(ref: str, stage: Annotated[str, typer.Option(help="staging, production or archived")] = "production") -> None:
    """Move a version to a stage (one production version per model)."""
    m = connect().models.promote(ref, stage)
    console.print(f"{m.ref} is now {m.stage}")


@model_app.command("delete")
def model_delete(ref: str) -> None:
    """Delete a version and its artifact (refused while a deployment serves it)."""
    connect().models.delete(ref)
    console.print(f"deleted {ref}")
