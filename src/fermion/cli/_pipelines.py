"""``fermion pipeline …``: DAGs of steps, placed across clouds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._output import console, print_json, print_table
from ._platform import connect

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
