"""HTTPS for the server and its gateway: a real `fermion server start --tls-self-signed`, called with verification on."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import fermion
from fermion.security._tls import self_signed_certificate, ssl_context_from
from fermion.testing import ServerProc, fermion_cmd, kill_replicas, stop, web
from tests.support import FIXTURE_PHOTONS


def start_tls_server(home: Path) -> ServerProc:
    """fermion.testing.start_server, serving HTTPS with a self-signed certificate."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "port").unlink(missing_ok=True)
    log = home / f"server-{time.monotonic_ns()}.log"
    env = {**os.environ, "FERMION_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    for name in ("FERMION_URL", "FERMION_TOKEN", "FERMION_CA"):
        env.pop(name, None)
    with log.open("wb") as out:
        proc = subprocess.Popen(fermion_cmd("server", "start", "--port", "0", "--port-file", str(home / "port"),
                                            "--tls-self-signed"), stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while not (home / "port").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"server did not start:\n{log.read_text()}")
        time.sleep(0.05)
    creds = json.loads((home / "cli.json").read_text())
    return ServerProc(home, f"https://127.0.0.1:{(home / 'port').read_text()}", creds["token"], proc, log)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    home = tmp_path_factory.mktemp("tls") / "home"
    server = start_tls_server(home)
    try:
        yield server
    finally:
        stop(server.proc)
        kill_replicas(home)


def cert_of(server: ServerProc) -> Path:
    return server.home / "tls" / "server.crt"


def test_https_with_the_generated_certificate(server: ServerProc) -> None:
    r = httpx.get(f"{server.url}/healthz", verify=ssl_context_from(cert_of(server)), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert "https, self-signed certificate at" in server.log.read_text()


def test_default_verification_refuses_the_self_signed_certificate(server: ServerProc) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        web.get(f"{server.url}/healthz", timeout=10)


def test_plain_http_gets_no_answer(server: ServerProc) -> None:
    plain = server.url.replace("https://", "http://")
    try:
        status = web.get(f"{plain}/healthz", timeout=10).status_code
    except httpx.HTTPError:
        status = None
    assert status != 200


def test_key_and_credentials_are_private_and_name_the_ca(server: ServerProc) -> None:
    assert stat.S_IMODE((server.home / "tls" / "server.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((server.home / "cli.json").stat().st_mode) == 0o600
    saved = json.loads((server.home / "cli.json").read_text())
    assert saved["url"] == server.url and saved["ca"] == str(cert_of(server))


def test_cli_verifies_the_server_with_the_saved_ca(server: ServerProc) -> None:
    assert json.loads(server.cli("deployment", "list", "--json").stdout) == []


def test_login_with_ca_and_fermion_ca(server: ServerProc, tmp_path: Path) -> None:
    env = {**server.env, "FERMION_HOME": str(tmp_path)}
    for name in ("FERMION_URL", "FERMION_TOKEN", "FERMION_CA"):
        env.pop(name, None)

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(fermion_cmd(*args), capture_output=True, text=True, env={**env, **extra}, timeout=60)

    refused = cli("login", server.url, "--token", server.token)
    assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr + refused.stdout
    assert "--ca" in refused.stderr + refused.stdout
    logged_in = cli("login", server.url, "--token", server.token, "--ca", str(cert_of(server)))
    assert logged_in.returncode == 0, logged_in.stderr
    assert json.loads((tmp_path / "cli.json").read_text())["ca"] == str(cert_of(server))
    (tmp_path / "cli.json").unlink()
    by_env = cli("deployment", "list", "--json", FERMION_URL=server.url, FERMION_TOKEN=server.token,
                 FERMION_CA=str(cert_of(server)))
    assert by_env.returncode == 0, by_env.stderr


def test_gateway_over_https(server: ServerProc) -> None:
    server.cli("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "v", "--public", "--env", "VERSION=7")
    with fermion.Client(f"{server.url}/d/v", verify=str(cert_of(server))) as client:
        assert client.version()["version"] == "7"
    r = httpx.post(f"{server.url}/d/v/version", json={}, verify=ssl_context_from(cert_of(server)), timeout=30)
    assert r.status_code == 200 and r.json()["version"] == "7"


def test_self_signed_certificate_names_its_hosts_and_is_reused(tmp_path: Path) -> None:
    cert_path, key_path = self_signed_certificate(tmp_path / "tls", ["fermion.internal", "10.1.2.3"])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "fermion.internal"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address(a)
                                                             for a in ("127.0.0.1", "::1", "10.1.2.3")}
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=364) < lifetime <= datetime.timedelta(days=365)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    first = (cert_path.read_bytes(), key_path.read_bytes())
    assert self_signed_certificate(tmp_path / "tls", ["fermion.internal"]) == (cert_path, key_path)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == first


def test_a_certificate_near_expiry_is_replaced(tmp_path: Path) -> None:
    cert_path, key_path = self_signed_certificate(tmp_path, [])
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    now = datetime.datetime.now(datetime.UTC)
    old = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
           .serial_number(1).not_valid_before(now - datetime.timedelta(days=340))
           .not_valid_after(now + datetime.timedelta(days=20))
           .add_extension(x509.SubjectAlternativeName(  # every name it should have: only the date is wrong
               [x509.DNSName("localhost"), *(x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1"))]),
               critical=False)
           .sign(key, hashes.SHA256()))
    cert_path.write_bytes(old.public_bytes(serialization.Encoding.PEM))
    self_signed_certificate(tmp_path, [])
    renewed = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert renewed.not_valid_after_utc - now > datetime.timedelta(days=364)


def test_conflicting_or_missing_tls_options_are_refused(tmp_path: Path) -> None:
    env = {**os.environ, "FERMION_HOME": str(tmp_path)}
    for args, message in ((["--tls-self-signed", "--tls-cert", "x"], "cannot be combined"),
                          (["--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(tmp_path / "k")],
                           "cannot read --tls-cert")):
        r = subprocess.run(fermion_cmd("server", "start", "--port", "0", *args), capture_output=True, text=True,
                           env=env, timeout=60)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_ca_context_verifies_the_host_name(tmp_path: Path) -> None:
    cert_path, _ = self_signed_certificate(tmp_path, [])
    context = ssl_context_from(cert_path)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_job_sends_its_checkpoints_to_an_https_server_it_verifies(server: ServerProc) -> None:
    from tests.support import EXAMPLES

    server.cli("job", "run", "--name", "tls-steps", "--workdir", str(EXAMPLES / "jobs"), "--", "python", "steps.py", "8",
               "0.1")
    with httpx.Client(base_url=f"{server.url}/api/v1", headers={"Authorization": f"Bearer {server.token}"},
                      verify=ssl_context_from(cert_of(server)), timeout=30) as api:
        deadline = time.monotonic() + 60
        while (job := api.get("/jobs/tls-steps").json())["status"] not in ("SUCCEEDED", "FAILED"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        log = next(iter(api.get("/jobs/tls-steps/logs").json().values()))
    assert job["status"] == "SUCCEEDED", log
    assert "checkpoint snapshot" in log and "CERTIFICATE_VERIFY_FAILED" not in log, log
