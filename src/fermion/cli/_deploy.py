"""``fermion deploy``, ``fermion deployment …``, ``fermion cloud …``, ``fermion events``."""

from __future__ import annotations

import contextlib
import time
from typing import Annotated

import typer

from ._output import EGRESS_HELP, console, print_json, print_table
from ._photon import REBUILD_HELP
from ..sdk import Deployment
from ._platform import connect

deployment_app = typer.Typer(help="Inspect and manage deployments.", no_args_is_help=True)
cloud_app = typer.Typer(help="Inspect the clouds this server manages.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def deploy(
    ref: Annotated[str | None, typer.Argument(help="'path/to/file.py:Class' or a .photon archive")] = None,
    name: Annotated[str, typer.Option(help="Deployment name (lowercase, digits, '-').")] = "",
    model: Annotated[str | None, typer.Option(help="Serve a registry model NAME:VERSION (classifier photon).")] = None,
    replicas: Annotated[int | None, typer.Option(
        help="How many replicas (default 1; not with --canary, whose count is --canary-replicas).")] = None,
    cloud: Annotated[list[str] | None, typer.Option(help="Allowed cloud (repeat); default any.")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPUs per replica (default: the photon's).")] = None,
    memory_gb: Annotated[float | None, typer.Option(help="Memory per replica in GB.")] = None,
    egress: Annotated[bool, typer.Option(help=EGRESS_HELP)] = False,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for the replicas (repeat).")] = None,
    public: Annotated[bool, typer.Option(help="Serve without a token.")] = False,
    rebuild: Annotated[bool, typer.Option(help=REBUILD_HELP)] = False,
    project: Annotated[str | None, typer.Option(help="The project (default: your token's, or default).")] = None,
    rate_limit: Annotated[float | None, typer.Option(
        help="Requests per second per caller (token, or address if public); past it: 429.")] = None,
    burst: Annotated[int, typer.Option(help="With --rate-limit: requests a caller may send at once.")] = 0,
    min_replicas: Annotated[int | None, typer.Option(
        help="Autoscale: the fewest replicas (0 scales to zero when idle; the first request wakes it).")] = None,
    max_replicas: Annotated[int | None, typer.Option(help="Autoscale: the most replicas.")] = None,
    target_ongoing_requests: Annotated[float, typer.Option(
        help="Autoscale: requests in flight per replica to aim for.")] = 2.0,
    upscale_delay: Annotated[float, typer.Option(help="Autoscale: seconds the load must call for more first.")] = 5.0,
    downscale_delay: Annotated[float, typer.Option(help="Autoscale: seconds the load must call for fewer first.")] = 60.0,
    scale_to_zero_delay: Annotated[float, typer.Option(
        help="Autoscale with --min-replicas 0: seconds with no request before stopping every replica.")] = 300.0,
    queue_limit: Annotated[int, typer.Option(
        help="Autoscale: requests the gateway holds while no replica is up; past it, 429.")] = 100,
    queue_timeout: Annotated[float, typer.Option(
        help="Autoscale: seconds a held request waits for a replica; past it, 503.")] = 60.0,
    canary: Annotated[int | None, typer.Option(
        help="Roll this version out as a canary taking PERCENT of the traffic, judged against the running one.")] = None,
    canary_replicas: Annotated[int, typer.Option(help="Canary: replicas of the new version.")] = 1,
    canary_window: Annotated[float, typer.Option(help="Canary: seconds it must hold before it is promoted.")] = 60.0,
    canary_min_requests: Annotated[int, typer.Option(help="Canary: answers it needs before any verdict.")] = 50,
    canary_max_error_increase: Annotated[float, typer.Option(
        help="Canary: error rate allowed over the stable version's, as a fraction (0.01: one point).")] = 0.01,
    canary_max_p99_ratio: Annotated[float, typer.Option(
        help="Canary: tail latency (p99 from 500 answers) allowed, as a multiple of the stable's.")] = 1.5,
    canary_auto: Annotated[bool, typer.Option(
        help="Canary: promote or roll back by verdict (--no-canary-auto: only `deployment promote|rollback`).")] = True,
    spot_share: Annotated[float | None, typer.Option(
        help="Run this share of the replicas (0-1, rounded down) on spot capacity.")] = None,
    spot_fallback: Annotated[str, typer.Option(
        help="With --spot-share: on_demand (stand-ins while spot is reclaimed, swapped back later) or none.")] = "on_demand",
    spot_max_reclaim_share: Annotated[float, typer.Option(
        help="With --spot-share: at most this share of the replicas on spot on one cloud.")] = 0.5,
    reoptimize_every: Annotated[float | None, typer.Option(
        help="Re-run the optimizer every this many seconds and move replicas when it saves enough.")] = None,
    min_saving: Annotated[float, typer.Option(
        help="With --reoptimize-every: share of the cost per hour a move must save.")] = 0.1,
    wait: Annotated[bool, typer.Option(help="Wait until the deployment is READY.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 300,
    json_out: JsonOpt = False,
) -> None:
    """Build (if needed), upload and deploy a photon; a new version rolls out without downtime."""
    from ..errors import UserInputError

    if not name:
        raise UserInputError("--name is required", hint="fermion deploy REF --name my-service")
    env_map: dict[str, str] = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"--env {item!r} is not KEY=VALUE")
        env_map[key] = value
    if canary is not None and replicas is not None:  # a canary leaves the running version's count as it is
        raise UserInputError("--replicas sets the running version's count, which a canary leaves as it is",
                             hint="give the canary's with --canary-replicas; scale with `fermion deployment scale`")
    autoscale_spec = spot_spec = placement_spec = canary_spec = None
    if min_replicas is not None or max_replicas is not None:
        low = min_replicas if min_replicas is not None else 1
        high = max_replicas if max_replicas is not None else max(low, 1 if replicas is None else replicas, 1)
        if low > high:
            raise UserInputError(f"--min-replicas {low} is above --max-replicas {high}")
        autoscale_spec = {"min": low, "max": high, "target_ongoing_requests": target_ongoing_requests,
                          "upscale_delay_s": upscale_delay, "downscale_delay_s": downscale_delay,
                          "scale_to_zero_delay_s": scale_to_zero_delay, "queue_limit": queue_limit,
                          "queue_timeout_s": queue_timeout}
    if spot_share is not None:
        if spot_fallback not in ("on_demand", "none"):
            raise UserInputError(f"--spot-fallback {spot_fallback!r} is not on_demand or none")
        spot_spec = {"share": spot_share, "fallback": spot_fallback, "max_reclaim_share": spot_max_reclaim_share}
    if reoptimize_every is not None:
        placement_spec = {"reoptimize_every_s": reoptimize_every, "min_saving": min_saving}
    if canary is not None:
        canary_spec = {"weight": canary, "replicas": canary_replicas, "window_s": canary_window,
                       "min_requests": canary_min_requests, "max_error_rate_increase": canary_max_error_increase,
                       "max_p99_ratio": canary_max_p99_ratio, "auto": canary_auto}
    with console.status(f"deploying {name}…") if wait and not json_out else contextlib.nullcontext():
        out = connect().deploy(ref, name=name, model=model, replicas=1 if replicas is None else replicas, clouds=cloud,
                               cpus=cpus, memory_gb=memory_gb, env=env_map, public=public, project=project, rebuild=rebuild,
                               rate_limit=rate_limit, burst=burst, autoscale=autoscale_spec, canary=canary_spec,
                               spot=spot_spec, placement=placement_spec, egress=egress, wait=wait, timeout=timeout)
    if json_out:
        print_json(out.to_json())
        return
    _show_deployment(out)
    if out.token:
        console.print(f"deployment token (shown once): [bold]{out.token}[/]")
    if out.status == "FAILED":
        raise typer.Exit(1)


def _show_deployment(d: Deployment) -> None:
    colour = {"READY": "green", "FAILED": "red", "DEGRADED": "yellow", "IDLE": "blue"}.get(d.status, "cyan")
    console.print(f"[bold]{d.name}[/] photon={d.photon_name} gen={d.generation} "
                  f"[{colour}]{d.status}[/] {d.ready}/{d.replicas} ready — {d.status_reason}")
    console.print(f"endpoint: {d.endpoint}  ({'public' if d.public else 'token required'})")
    if d.autoscale:
        a = d.autoscale
        console.print(f"autoscale: {a['min']}–{a['max']} replicas, {a['target_ongoing_requests']:g} in flight each "
                      f"(up after {a['upscale_delay_s']:g}s, down after {a['downscale_delay_s']:g}s"
                      + (f", to zero after {a['scale_to_zero_delay_s']:g}s idle" if a["min"] == 0 else "") + ")")
    if d.canary:
        c = d.canary
        console.print(f"canary: generation {c['generation']}, {c['weight']}% of the traffic, {c['ready']}/{c['replicas']} "
                      f"ready; " + (f"promoted after {c['window_s']:g}s if it holds (≥ {c['min_requests']} answers, error "
                                    f"rate ≤ stable + {100 * c['max_error_rate_increase']:g} points, tail latency ≤ "
                                    f"{c['max_p99_ratio']:g}× stable), rolled back as soon as it does not"
                                    if c["auto"] else "ended by `fermion deployment promote|rollback` only"))
    if d.last_error:
        console.print(f"[red]last error:[/] {d.last_error}")
    if d.spot:
        s = d.spot
        console.print(f"spot: {s['share']:.0%} of the replicas, fallback {s['fallback']}, at most "
                      f"{s['max_reclaim_share']:.0%} of them on spot per cloud")
    print_table(None, ["replica", "cloud", "market", "gen", "state", "since", "reason"],
                [(r.id, r.cloud, "spot" if r.spot else "on-demand", r.generation, r.state,
                  _age(r.state_since), r.reason) for r in d.replica_list])


def _age(since: float) -> str:
    seconds = max(0, int(time.time() - since))
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"


@deployment_app.command("list")
def deployment_list(json_out: JsonOpt = False) -> None:
    """All deployments."""
    rows = connect().deployments()
    if json_out:
        print_json([d.to_json() for d in rows])
        return
    print_table("deployments", ["name", "photon", "gen", "status", "ready", "clouds", "endpoint"],
                [(d.name, d.photon_name, d.generation, d.status, f"{d.ready}/{d.replicas}",
                  ",".join(sorted({r.cloud for r in d.replica_list if r.cloud})), d.endpoint) for d in rows])


@deployment_app.command("status")
def deployment_status(name: str, json_out: JsonOpt = False) -> None:
    """A deployment with its replicas and recent events."""
    handle = connect().deployment(name)
    d = handle.get()
    if json_out:
        print_json(d.to_json())
        return
    _show_deployment(d)
    print_table("recent events", ["time", "change", "reason"],
                [(time.strftime("%H:%M:%S", time.localtime(e.at)), f"{e.old} → {e.new}", e.reason)
                 for e in handle.events(limit=10)])


@deployment_app.command("logs")
def deployment_logs(name: str, tail: Annotated[int, typer.Option(help="Lines per replica.")] = 50) -> None:
    """The last lines of each replica's log."""
    for replica, text in connect().deployment(name).logs(tail).items():
        console.rule(replica)
        console.print(text, markup=False, highlight=False)


@deployment_app.command("scale")
def deployment_scale(name: str, replicas: Annotated[int, typer.Argument(help="New replica count.")],
                     json_out: JsonOpt = False) -> None:
    """Change the number of replicas."""
    d = connect().deployment(name).scale(replicas)
    if json_out:
        print_json(d.to_json())
    else:
        console.print(f"{name}: scaling to {replicas} replicas")


@deployment_app.command("migrate")
def deployment_migrate(
    name: str,
    cloud: Annotated[list[str], typer.Option(help="A cloud to run on (repeat).")],
    wait: Annotated[bool, typer.Option(help="Wait until every replica runs there.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 300,
    json_out: JsonOpt = False,
) -> None:
    """Move a live deployment onto these clouds, one replica at a time: each new replica is READY
    before an old one drains, so no request fails."""
    from ._placement import show_optimization

    handle = connect().deployment(name)
    with console.status(f"moving {name} to {', '.join(cloud)}…") if wait and not json_out else contextlib.nullcontext():
        out = handle.migrate(cloud, wait=wait, timeout=timeout)
    if json_out:
        print_json(out.to_json())
        return
    show_optimization(out)
    console.print(f"{name}: " + (f"now on {out.target}" if wait and out.applied else
                                 f"moving to {out.target}, one replica at a time" if out.applied else
                                 f"already on {out.target}; its allowed clouds are now {', '.join(cloud)}"))


@deployment_app.command("promote")
def deployment_promote(name: str, json_out: JsonOpt = False) -> None:
    """End the canary: it becomes the deployment's version, and the stable replicas roll over to it."""
    d = connect().deployment(name).promote()
    _said(d, json_out, f"{name}: canary promoted; generation {d.generation} rolls out")


@deployment_app.command("rollback")
def deployment_rollback(name: str, json_out: JsonOpt = False) -> None:
    """End the canary: its replicas drain, and the running version takes all the traffic again."""
    d = connect().deployment(name).rollback()
    _said(d, json_out, f"{name}: canary rolled back; generation {d.generation} takes all the traffic")


def _said(d: Deployment, json_out: bool, text: str) -> None:
    if json_out:
        print_json(d.to_json())
    else:
        console.print(text)


@deployment_app.command("delete")
def deployment_delete(name: str) -> None:
    """Drain every replica and remove the deployment."""
    connect().deployment(name).delete()
    console.print(f"{name}: deleting (replicas drain first)")


@cloud_app.command("list")
def cloud_list(json_out: JsonOpt = False) -> None:
    """Clouds with health, capacity and replica counts."""
    rows = connect().clouds()
    if json_out:
        print_json([c.to_json() for c in rows])
        return
    print_table("clouds", ["name", "kind", "health", "replicas", "cpus free/total", "memory GB free/total", "injected"],
                [(c.name, c.kind, c.health + (f" ({c.health_reason})" if c.health_reason else ""),
                  c.replicas, f"{c.free['cpus']:g}/{c.capacity['cpus']:g}",
                  f"{c.free['memory_gb']:g}/{c.capacity['memory_gb']:g}",
                  ", ".join(f"{k}={v}" for k, v in c.inject.items() if v) or "-") for c in rows])
    clouds_by_isolation: dict[str, list[str]] = {}
    for c in rows:  # under the table: a sentence each, too long for a column
        clouds_by_isolation.setdefault(c.isolation or "not reported (an older server)", []).append(c.name)
    for text, names in clouds_by_isolation.items():
        console.print(f"isolation of {', '.join(names)}: {text}", highlight=False, markup=False)


@cloud_app.command("status")
def cloud_status(name: str, json_out: JsonOpt = False) -> None:
    """One cloud and the replicas on it."""
    conn = connect()
    cloud = conn.clouds.get(name)
    replicas = [r for r in conn.deployments.replicas() if r.cloud == name]
    if json_out:
        print_json({**cloud.to_json(), "replica_list": [r.to_json() for r in replicas]})
        return
    console.print(f"[bold]{name}[/] {cloud.kind} {cloud.health} — {cloud.free['cpus']:g} cpus free")
    print_table(None, ["replica", "deployment", "state", "since", "reason"],
                [(r.id, r.deployment, r.state, _age(r.state_since), r.reason) for r in replicas])


@cloud_app.command("fail")
def cloud_fail(name: str) -> None:
    """Inject an outage: kill every replica on the cloud and refuse new ones."""
    out = connect().clouds.fail(name)
    console.print(f"cloud {name}: down, {out['killed']} replicas and {out['attempts_killed']} job attempts killed")


@cloud_app.command("recover")
def cloud_recover(name: str) -> None:
    """End an injected outage."""
    connect().clouds.recover(name)
    console.print(f"cloud {name}: healthy")


@cloud_app.command("agent")
def cloud_agent(name: str, json_out: JsonOpt = False) -> None:
    """Issue a new token for an agent cloud's agent (the old one stops working) and print the command
    that starts the agent inside that cloud."""
    out = connect().clouds.agent(name)
    if json_out:
        print_json(out)
        return
    console.print(f"cloud {name}: a new agent token was issued; any earlier one no longer works.\n"
                  "Run this on the cloud's machine (a VM, or the head node of its Ray cluster):", highlight=False)
    typer.echo(out["command"])


@cloud_app.command("gc")
def cloud_gc(json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Collect garbage in every reachable store: ended jobs' checkpoints, then chunks nothing names."""
    with console.status("collecting garbage in the clouds' stores…"):  # one listing of each store: minutes on a big one
        out = connect().clouds.gc()
    if json_out:
        print_json(out)
        return
    rows = [(cloud, v.get("checkpoints_dropped", ""), v.get("objects", ""), v.get("bytes", ""), v.get("error", ""))
            for cloud, v in out["stores"].items()]
    print_table("stores", ["cloud", "checkpoints dropped", "objects deleted", "bytes freed", "error"], rows)


def events(object_id: Annotated[str | None, typer.Option("--object", help="Only this object.")] = None,
           limit: Annotated[int, typer.Option(help="How many.")] = 50, json_out: JsonOpt = False) -> None:
    """Recent state changes."""
    rows = connect().events(object_id, limit)
    if json_out:
        print_json([e.to_json() for e in rows])
        return
    print_table("events", ["time", "kind", "object", "change", "reason"],
                [(time.strftime("%H:%M:%S", time.localtime(e.at)), e.kind, e.object_id,
                  f"{e.old} → {e.new}", e.reason) for e in rows])
