"""``fermion pipeline …``: DAGs of steps, placed across clouds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._output import console, print_json, print_table
from ._platform import bars, connect

if TYPE_CHECKING:
    from ..sdk import PipelineRun

pipeline_app = typer.Typer(help="Pipelines: DAGs of jobs, fine-tunes, evaluations, gates and deploys.",
                           no_args_is_help=True)


@pipeline_app.command("plan")
def pipeline_plan(
    spec: Annotated[Path, typer.Argument(help="The pipeline's YAML file.")],
    alpha: Annotated[float | None, typer.Option(help="Weight of the completion time in hours (default: the file's).")] = None,
    beta: Annotated[float | None, typer.Option(help="Weight of the cost in $ (default: the file's).")] = None,
    method: Annotated[str, typer.Option(help="auto (dp on a chain, else ilp), dp, ilp or exhaustive.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Where each step should run to minimise alpha * completion time + beta * cost (machine hours
    and the egress of the data it fetches from other clouds), and why."""
    out = connect().pipelines.plan(spec, alpha=alpha, beta=beta, method=method)
    if json_out:
        print_json(out.to_json())
        return
    plan = out.plan
    if not plan.feasible:
        console.print(f"[bold red]infeasible:[/] {plan.infeasible_reason}")
        raise typer.Exit(1)
    print_table(f"plan for {out.pipeline}: alpha={plan.alpha:g} beta={plan.beta:g}",
                ["step", "cloud", "hours", "$", "fetches", "next best"],
                [(p.step, p.cloud, f"{p.start_h:.3f}–{p.finish_h:.3f}", f"{p.cost:.4f}",
                  ", ".join(f"{m.what} {m.gb:g} GB from {m.source}" for m in p.moves) or "-",
                  _next_best(p.alternatives, plan.score)) for p in plan.steps])
    for step, source in out.estimates.items():
        if source != "the spec":
            console.print(f"[dim]{step}: hours from {source}[/]")
    console.print(f"done in [bold]{plan.completion_h:.3f} h[/] for [bold]${plan.cost:.4f}[/]: score {plan.score:.4f} "
                  f"({plan.method}, {plan.solve_ms:.1f} ms)")
    if out.server_steps:
        console.print(f"[dim]on the server: {', '.join(out.server_steps)}[/]")


def _next_best(alternatives: dict[str, float], score: float) -> str:
    """The cloud that would score best if only this step moved, and by how much it is worse."""
    if not alternatives:
        return "-"
    cloud, alt = min(alternatives.items(), key=lambda kv: kv[1])
    return f"{cloud} (+{alt - score:.4f})"


COLOURS = {"SUCCEEDED": "green", "CACHED": "blue", "FAILED": "red", "BLOCKED": "yellow", "RUNNING": "cyan",
           "CANCELLED": "yellow"}
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
RunArg = Annotated[str, typer.Argument(help="A run number, or latest.")]


def show_run(run: PipelineRun) -> None:
    colour = COLOURS.get(run.status, "cyan")
    console.print(f"[bold]{run.pipeline}[/] run {run.number} [{colour}]{run.status}[/] — {run.reason} "
                  f"[dim](trigger: {run.trigger})[/]")
    print_table(None, ["step", "kind", "status", "cloud", "reason"],
                [(s.step, s.kind, s.status, s.cloud or run.plan.get(s.step, ""), s.reason) for s in run.steps])


@pipeline_app.command("run")
def pipeline_run(
    spec: Annotated[str, typer.Argument(help="The pipeline's YAML file (registered, with its code), or the NAME of "
                                              "a registered one.")],
    wait: Annotated[bool, typer.Option(help="Follow the run to its end.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to follow.")] = 3600,
    json_out: JsonOpt = False,
) -> None:
    """Register the pipeline and start a run: steps whose inputs are unchanged since an earlier run are
    skipped (cached), each step retries on its own, and a failure stops what depends on it."""
    from rich.live import Live

    conn = connect()
    run = conn.pipelines.run(spec, progress=bars)
    if wait:
        if json_out:
            run = conn.pipelines.wait(run.pipeline, run.number, timeout)
        else:
            with Live(console=console, refresh_per_second=4, transient=True) as live:
                run = conn.pipelines.wait(run.pipeline, run.number, timeout,
                                          on_update=lambda r: live.update(_run_table(r)))
    if json_out:
        print_json(run.to_json())
    else:
        show_run(run)
    if run.status == "FAILED":
        raise typer.Exit(1)


def _run_table(run: PipelineRun):  # noqa: ANN202 - a Rich table
    from rich.table import Table

    table = Table(title=f"{run.pipeline} run {run.number}: {run.status}", header_style="bold cyan")
    for column in ("step", "status", "cloud", "reason"):
        table.add_column(column)
    for s in run.steps:
        table.add_row(s.step, f"[{COLOURS.get(s.status, 'white')}]{s.status}[/]", s.cloud or run.plan.get(s.step, ""),
                      s.reason[:90])
    return table


@pipeline_app.command("status")
def pipeline_status(name: str, run: RunArg = "latest", json_out: JsonOpt = False) -> None:
    """A run's steps: state, cloud, reason (with the cause of a failure) and outputs."""
    out = connect().pipelines.status(name, run)
    if json_out:
        print_json(out.to_json())
        return
    show_run(out)
    for s in out.steps:
        parts = [f"model {s.outputs['model']}"] if s.outputs.get("model") else []
        parts += [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in sorted((s.outputs.get("metrics") or {}).items())[:8]]
        if parts:
            console.print(f"  {s.step}: " + ", ".join(parts), markup=False, highlight=False)


@pipeline_app.command("list")
def pipeline_list(json_out: JsonOpt = False) -> None:
    """Registered pipelines, their triggers and their last run."""
    rows = connect().pipelines()
    if json_out:
        print_json([p.to_json() for p in rows])
        return
    print_table("pipelines", ["name", "project", "steps", "triggers", "runs", "last run"],
                [(p.name, p.project, p.steps, ", ".join(f"dataset {t['dataset']}" if t.get("dataset") else
                                                        f"cron {t['cron']}" for t in p.triggers) or "-", p.runs,
                  f"{p.last_run['number']} {p.last_run['status']} "
                  f"({time.strftime('%H:%M:%S', time.localtime(p.last_run['created_at']))})" if p.last_run else "-")
                 for p in rows])


@pipeline_app.command("logs")
def pipeline_logs(name: str, run: RunArg = "latest",
                  tail: Annotated[int, typer.Option(help="Lines per attempt.")] = 100) -> None:
    """Each step's job logs."""
    for step, attempts in connect().pipelines.logs(name, run, tail).items():
        for attempt, text in attempts.items():
            console.rule(f"{step} · {attempt}")
            console.print(text, markup=False, highlight=False)


@pipeline_app.command("cancel")
def pipeline_cancel(name: str, run: RunArg = "latest") -> None:
    """Stop a run: its running jobs are cancelled, its pending steps will not start."""
    out = connect().pipelines.cancel(name, run)
    console.print(f"{name} run {out.number}: {out.status}")


@pipeline_app.command("delete")
def pipeline_delete(name: str) -> None:
    """Forget a pipeline and its runs (the jobs, models and deployments they made stay)."""
    connect().pipelines.delete(name)
    console.print(f"pipeline {name}: deleted")
