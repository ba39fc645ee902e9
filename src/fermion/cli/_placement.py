"""``fermion catalog`` and ``fermion optimize``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UserInputError
from ._output import console, print_json, print_table

catalog_app = typer.Typer(help="Browse the offerings of the shipped cloud catalogs.", no_args_is_help=True)


@catalog_app.command("list")
def catalog_list(
    gpu: Annotated[str | None, typer.Option(help="Accelerator name, e.g. A100.")] = None,
    cloud: Annotated[str | None, typer.Option(help="Only this cloud.")] = None,
    max_price: Annotated[float | None, typer.Option(help="Highest $/hour.")] = None,
    min_cpus: Annotated[float, typer.Option(help="At least this many vCPUs.")] = 0,
    spot: Annotated[bool, typer.Option(help="Spot prices (only offerings that have one).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Offerings, cheapest first."""
    from ..placement import builtin_catalogs, list_offerings

    rows = list_offerings(gpu=gpu, cloud=cloud, max_price=max_price, min_cpus=min_cpus, spot=spot)
    if json_out:
        print_json([o.model_dump() for o in rows])
        return
    print_table(
        f"offerings ({len(rows)}), cheapest first",
        ["cloud", "region", "instance", "vCPUs", "memory GB", "accelerator", "$/h", "spot $/h"],
        [(o.cloud, o.region, o.instance_type, f"{o.vcpus:g}", f"{o.memory_gb:g}",
          f"{o.accelerator_count}x {o.accelerator}" if o.accelerator else "-", f"{o.price:.4f}",
          f"{o.spot_price:.4f}" if o.spot_price is not None else "-") for o in rows],
    )
    for info in builtin_catalogs().values():
        if not cloud or info.cloud == cloud:
            console.print(f"[dim]{info.cloud}: prices taken {info.taken}. {info.source}[/]")


def optimize_cmd(
    spec: Annotated[Path | None, typer.Argument(help="YAML: a placement request, plus optional `clouds:` state.")] = None,
    deployment: Annotated[str | None, typer.Option(help="Optimize this running deployment over the server's clouds.")] = None,
    apply: Annotated[bool, typer.Option(help="With --deployment: move replicas to the plan, one at a time.")] = False,
    min_saving: Annotated[float, typer.Option(help="With --apply: move only if cost falls by this share.")] = 0.1,
    alpha: Annotated[float, typer.Option(help="With --deployment: weight of the performance penalty.")] = 1.0,
    beta: Annotated[float, typer.Option(help="With --deployment: weight of the cost ($/hour).")] = 1.0,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Place replicas over the catalogs at the best alpha * performance + beta * cost, and say why."""
    if deployment is not None:
        _optimize_deployment(deployment, apply, min_saving, alpha, beta, json_out)
        return
    if spec is None:
        raise UserInputError("give a placement spec file, or --deployment NAME",
                             hint="see examples/placement/inference.yaml")
    if (alpha, beta) != (1.0, 1.0):
        raise UserInputError("--alpha and --beta are for --deployment", hint="a spec file sets them: objective: {alpha: .., beta: ..}")
    import yaml
    from pydantic import ValidationError

    from ..placement import CloudState, PlacementRequest, builtin_catalogs, optimize

    try:
        data: dict[str, Any] = yaml.safe_load(spec.read_text()) or {}
        states = {k: CloudState.model_validate(v or {}) for k, v in (data.pop("clouds", None) or {}).items()}
        request = PlacementRequest.model_validate(data)
    except FileNotFoundError:
        raise UserInputError(f"spec file {spec} does not exist") from None
    except (yaml.YAMLError, ValidationError, AttributeError) as exc:
        raise UserInputError(f"invalid placement spec {spec}: {exc}") from exc
    offerings = [o for info in builtin_catalogs().values() for o in info.offerings]
    plan = optimize(request, offerings, states)
    if json_out:
        print_json(plan.model_dump())
    else:
        show_plan(plan, request)
    if not plan.feasible:
        raise typer.Exit(1)


def _optimize_deployment(name: str, apply: bool, min_saving: float, alpha: float, beta: float,
                         json_out: bool) -> None:
    from ._platform import connect

    out = connect().deployment(name).optimize(alpha, beta, apply=apply, min_saving=min_saving)
    if json_out:
        print_json(out.to_json())
        return
    show_optimization(out, alpha, beta)
    if out.applied:
        console.print("[green]moving replicas[/], one at a time (watch `fermion deployment status`)")
    elif apply:
        console.print(f"not moved: the saving is below {min_saving:.0%} or the placement is already best")


def show_optimization(out: Any, alpha: float = 1.0, beta: float = 1.0) -> None:
    """A deployment's optimal placement against where it runs now (an SDK Optimization)."""
    from ..placement import Objective, PlacementRequest

    show_plan(out.plan, PlacementRequest(replicas=max(1, sum(out.current.values()), sum((out.target or {}).values())),
                                         objective=Objective(alpha=alpha, beta=beta)))
    console.print(f"now: {out.current} at ${out.current_cost_per_hour:.4f}/h; "
                  f"best: {out.target} at ${out.target_cost_per_hour or 0:.4f}/h (saving {out.saving:.0%})")


def show_plan(plan: Any, request: Any) -> None:
    if not plan.feasible:
        console.print(f"[bold red]infeasible:[/] {plan.infeasible_reason}")
    else:
        print_table(
            f"plan: {request.replicas} replicas, alpha={request.objective.alpha:g} beta={request.objective.beta:g}",
            ["cloud", "region", "instance", "spot", "replicas", "$/h each", "perf penalty", "score each"],
            [(p.cloud, p.region, p.instance_type, "yes" if p.spot else "", p.count, f"{p.price_per_hour:.4f}",
              f"{p.performance_penalty:.3f}", f"{p.score:.4f}") for p in plan.placements],
        )
        per_cloud: dict[str, list[Any]] = {}
        for p in plan.placements:
            per_cloud.setdefault(p.cloud, []).append(p)
        print_table(
            "per cloud", ["cloud", "replicas", "share", "cost $/h", "mean perf penalty"],
            [(cl, sum(p.count for p in ps), f"{sum(p.count for p in ps) / request.replicas:.0%}",
              f"{sum(p.price_per_hour * p.count for p in ps):.4f}",
              f"{sum(p.performance_penalty * p.count for p in ps) / sum(p.count for p in ps):.3f}")
             for cl, ps in per_cloud.items()],
        )
        console.print(f"total: [bold]${plan.cost_per_hour:.4f}/h[/], score {plan.score:.4f} "
                      f"({plan.method}, {plan.solve_ms:.1f} ms)")
    if plan.rejected:
        print_table("not chosen", ["cloud", "why"], [(r.cloud, r.reason) for r in plan.rejected])
