"""The web dashboard in a real browser: headless Chromium (Debian's, installed by `make test`)
driven by Playwright, against a real server on loopback."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from fermion.testing import CHROMIUM_ARGS, ServerProc, chromium_path, running_server, web
from tests.support import FIXTURE_PHOTONS

CLOUDS = """clouds:
  - name: alpha
    pricing: {catalog: aws, instance_type: c3.xlarge}
  - name: beta
    pricing: {price_per_hour: 0.25, spot_price_per_hour: 0.08}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    # replicas scraped every second, not 10: the charts have points within the test
    with running_server(tmp_path_factory.mktemp("ui") / "home", CLOUDS, env={"FERMION_SCRAPE_S": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()


def log_in(page: Page, server: ServerProc, token: str | None = None) -> None:
    page.goto(f"{server.url}/ui")
    page.fill("#token", token or server.token)
    page.click("#login button[type=submit]")


def test_login_and_a_wrong_token_is_refused(page: Page, server: ServerProc) -> None:
    log_in(page, server, "fma_not-a-real-token")
    expect(page.locator("#login-error")).to_contain_text("refused")
    expect(page.locator("#view")).to_be_hidden()
    log_in(page, server)
    expect(page.locator("#view h1")).to_have_text("Overview")
    expect(page.locator("#clouds [data-cloud]")).to_have_count(2)
    expect(page.locator("#who")).to_contain_text("server admin")
    # the running cost on the page is the API's
    total = web.get(f"{server.url}/api/v1/overview", headers={"Authorization": f"Bearer {server.token}"}).json()
    expect(page.locator("#total-cost")).to_have_text(f"${total['cost_per_hour']:.{4 if total['cost_per_hour'] < 1 else 2}f}/h")
    # the page holds no data of its own and runs only its own files
    html = web.get(f"{server.url}/ui")
    assert "default-src 'self'" in html.headers["content-security-policy"] and server.token not in html.text
    assert web.get(f"{server.url}/ui/static/../../../etc/passwd").status_code == 404


def test_a_deployment_from_the_cli_appears_and_a_killed_replica_changes_live(page: Page, server: ServerProc) -> None:
    log_in(page, server)
    page.click("#nav a[data-view=deployments]")
    expect(page.locator("#view h1")).to_have_text("Deployments")
    page.evaluate("window.__same_page = true")  # gone if the page reloads
    server.cli("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "shown", "--public", "--env", "VERSION=one")
    card = page.locator("[data-deployment=shown]")
    expect(card).to_be_visible(timeout=30_000)
    expect(card.locator(".badge.READY[data-replica]")).to_have_count(1, timeout=30_000)
    replica = server.deployment("shown")["replica_list"][0]["id"]
    os.kill(server.pid(replica), signal.SIGKILL)
    # the controller sees it die and replaces it: the page follows without a reload
    expect(card.locator(f'[data-replica="{replica}"]')).to_have_count(0, timeout=30_000)
    expect(card.locator(".badge.READY[data-replica]")).to_have_count(1, timeout=60_000)
    expect(card).to_contain_text("exited with code 137")  # why, from the deployment's last error
    page.click("#nav a[data-view=events]")
    expect(page.locator("#event-log")).to_contain_text(replica)
    assert page.evaluate("window.__same_page") is True


def test_the_overview_shows_only_what_the_token_may_see(page: Page, server: ServerProc) -> None:
    server.cli("project", "create", "ours")
    server.cli("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "ourdep", "--project", "ours", "--public",
               "--replicas", "0")
    token = json.loads(server.cli("token", "create", "peek", "--project", "ours", "--role", "viewer",
                                  "--json").stdout)["token"]
    overview = web.get(f"{server.url}/api/v1/overview", headers={"Authorization": f"Bearer {token}"}).json()
    assert [d["name"] for d in overview["deployments"]] == ["ourdep"]
    log_in(page, server, token)
    page.click("#nav a[data-view=deployments]")
    expect(page.locator("[data-deployment=ourdep]")).to_be_visible()
    expect(page.locator("[data-deployment]")).to_have_count(1)  # not the default project's


def test_the_stream_pushes_each_new_event_to_whoever_may_see_it(server: ServerProc) -> None:
    server.cli("project", "create", "theirs")
    token = json.loads(server.cli("token", "create", "narrow", "--project", "theirs", "--role", "viewer",
                                  "--json").stdout)["token"]
    got: dict[str, list[dict]] = {"admin": [], "narrow": []}

    def follow(name: str, bearer: str) -> None:
        with web.stream("GET", f"{server.url}/api/v1/stream", params={"limit_s": 8},
                        headers={"Authorization": f"Bearer {bearer}"}, timeout=20) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    got[name].append(json.loads(line.removeprefix("data: ")))

    readers = [threading.Thread(target=follow, args=args) for args in (("admin", server.token), ("narrow", token))]
    for t in readers:
        t.start()
    time.sleep(1.5)  # both streams are open
    server.cli("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "unseen", "--public", "--replicas", "0")
    for t in readers:
        t.join(30)
    assert "unseen" in {e["object_id"] for e in got["admin"] if e["kind"] == "deployment"}
    assert "unseen" not in {e["object_id"] for e in got["narrow"]}  # another project's
    assert web.get(f"{server.url}/api/v1/stream", params={"limit_s": 1}).status_code == 401


def test_traffic_shows_as_charts_and_in_the_servers_metrics(page: Page, server: ServerProc) -> None:
    server.cli("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "busy", "--public", "--env", "VERSION=b")
    admin = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        deadline = time.monotonic() + 60
        while True:  # traffic until two scrapes have seen it
            for _ in range(20):
                assert http.post("/d/busy/version").status_code == 200
            points = http.get("/api/v1/deployments/busy/series", headers=admin).json()
            if len(points) > 1 and any(p["qps"] > 0 and p["p50_ms"] for p in points):
                break
            assert time.monotonic() < deadline, points
        busy = next(p for p in points if p["qps"] > 0)
        assert 0 < busy["p50_ms"] <= busy["p99_ms"] < 1000 and busy["errors"] == 0
        assert [k.split("/")[1] for k in busy["by_version"]] == ["v1"]
        metrics = http.get("/metrics", headers=admin).text
    assert 'fermion_deployment_requests_per_second{cloud="' in metrics and 'deployment="busy"' in metrics
    log_in(page, server)
    page.click("#nav a[data-view=deployments]")
    card = page.locator("[data-deployment=busy]")
    expect(card.locator("[data-chart=qps] polyline")).to_have_count(1)
    expect(card.locator("[data-chart=p50_ms] polyline")).to_have_count(2)  # p50 and p99


# a job that reports a training curve the way a training loop does: lines in its metrics.jsonl
CURVE_JOB = """
import json, os
with open(os.path.join(os.environ["FERMION_JOB_OUTPUT"], "metrics.jsonl"), "a") as f:
    for step in range(1, 6):
        f.write(json.dumps({"step": step * 10, "epoch": step, "train_loss": 2.0 / step}) + "\\n")
        f.write(json.dumps({"step": step * 10, "epoch": step, "eval_loss": 2.2 / step, "eval_accuracy": 0.5 + step / 12}) + "\\n")
"""


def test_the_job_page_shows_attempts_and_the_training_curve(page: Page, server: ServerProc) -> None:
    server.cli("job", "run", "--name", "curve", "--follow", "--timeout", "120", "--", "python", "-c", CURVE_JOB)
    log_in(page, server)
    page.click("#nav a[data-view=jobs]")
    card = page.locator("[data-job=curve]")
    expect(card.locator(".badge.SUCCEEDED").first).to_be_visible()
    expect(card.locator("[data-attempt='1']")).to_be_visible()  # its attempt on the timeline
    for key in ("train_loss", "eval_loss", "eval_accuracy"):
        expect(card.locator(f"[data-curve] [data-chart={key}] polyline")).to_have_count(1)
    points = card.locator("[data-chart=eval_accuracy] polyline").get_attribute("points")
    assert len(points.split()) == 5  # one per epoch
    card.locator("button", has_text="logs").click()
    expect(card.locator("pre.logs")).to_contain_text("attempt 1")


def test_the_pipelines_page_shows_each_step_of_the_last_run(page: Page, server: ServerProc) -> None:
    import fermion

    work = "import json, os; open(os.environ['FERMION_JOB_OUTPUT'] + '/metrics.jsonl', 'a').write(json.dumps({'score': 2}) + chr(10))"
    spec = {"name": "ui-pipe", "steps": [
        {"name": "work", "command": ["python", "-c", work], "resources": {"cpus": 0.25, "memory_gb": 0.25}},
        {"name": "check", "kind": "gate", "after": ["work"], "with": {"metric": "score", "at_least": 3}},
        {"name": "publish", "after": ["check"], "command": ["true"]}]}
    with fermion.connect(server.url, server.token) as conn:
        run = conn.pipelines.run(spec, wait=True, timeout=120)
    assert run.status == "FAILED"
    log_in(page, server)
    page.click("#nav a[data-view=pipelines]")
    card = page.locator("[data-pipeline=ui-pipe]")
    expect(card.locator(".head .badge.FAILED")).to_be_visible()
    expect(card.locator("[data-step=work] .badge.SUCCEEDED")).to_be_visible()
    expect(card.locator("[data-step=check]")).to_contain_text("did not hold: score 2.0000 < 3")
    expect(card.locator("[data-step=publish] .badge.BLOCKED")).to_be_visible()
    expect(card).to_contain_text("started by admin")


def test_the_cost_page_adds_up_to_what_the_api_says(page: Page, server: ServerProc) -> None:
    admin = {"Authorization": f"Bearer {server.token}"}
    before = web.get(f"{server.url}/api/v1/costs", headers=admin).json()
    assert before["total"] > 0 and sum(before["by_cloud"].values()) == pytest.approx(before["total"], abs=1e-5)
    assert sum(before["by_deployment"].values()) + sum(before["by_job"].values()) == pytest.approx(
        before["total"], abs=1e-5)
    assert before["series"][-1]["by_cloud"] == pytest.approx(before["by_cloud"], abs=1e-4)
    log_in(page, server)
    page.click("#nav a[data-view=cost]")
    shown = float(page.locator("#cost-total").inner_text().removeprefix("$"))
    after = web.get(f"{server.url}/api/v1/costs", headers=admin).json()
    # spend only grows while replicas run: what the page showed lies between the two answers
    assert round(before["total"], 4) <= shown <= round(after["total"], 4) + 1e-4


def test_a_stream_ends_when_its_token_is_revoked(server: ServerProc) -> None:
    made = json.loads(server.cli("token", "create", "short-lived", "--role", "viewer", "--json").stdout)
    lines: list[str] = []

    def follow() -> None:
        with web.stream("GET", f"{server.url}/api/v1/stream", params={"limit_s": 60},
                        headers={"Authorization": f"Bearer {made['token']}"}, timeout=90) as r:
            lines.extend(r.iter_lines())

    reader = threading.Thread(target=follow)
    reader.start()
    time.sleep(1)
    server.cli("token", "revoke", made["id"])
    reader.join(30)  # the stream checks its token every 5 s: it ends long before its 60 s
    assert not reader.is_alive()
    assert "event: ended" in lines
