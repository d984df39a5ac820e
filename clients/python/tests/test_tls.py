"""TLS and mutual TLS on a real node: the Python client with `Tls(...)`, and the
CLI given a bare `host:port` plus TLS flags (then https://)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest
import trustme

from polity import AsyncClient, Client, PolityError, Tls

from conftest import RPC_TIMEOUT_S, bin_dir

START_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory):
    """One node requiring mutual TLS: (host:port, paths of CA, client cert, client key)."""
    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("localhost")
    client = ca.issue_cert("client")
    paths = {}
    for name, blob in [
        ("ca.pem", ca.cert_pem), ("server.pem", server.cert_chain_pems[0]), ("server.key", server.private_key_pem),
        ("client.pem", client.cert_chain_pems[0]), ("client.key", client.private_key_pem),
    ]:
        blob.write_to_path(str(root / name))
        paths[name] = root / name
    data_dir = root / "node"
    log = open(root / "node.log", "wb")
    node = subprocess.Popen(
        [
            str(bin_dir() / "polity"), "node", "--data-dir", str(data_dir),
            "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
            "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--capability", "echo=builtin:echo",
            "--tls-cert", str(paths["server.pem"]), "--tls-key", str(paths["server.key"]),
            "--tls-client-ca", str(paths["ca.pem"]),
        ],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        started = time.monotonic()
        while True:
            endpoints = data_dir / "endpoints.json"
            if endpoints.exists():
                try:
                    announced = json.loads(endpoints.read_text())
                except ValueError:
                    announced = {}
                if announced.get("pid") == node.pid:
                    break
            assert node.poll() is None, (root / "node.log").read_text()
            assert time.monotonic() - started < START_TIMEOUT_S, "the TLS node did not start"
            time.sleep(0.05)
        assert announced["grpc"].startswith("https://"), announced
        yield announced["grpc"].split("://", 1)[1], paths
    finally:
        node.terminate()
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
        log.close()


def mutual(paths) -> Tls:
    return Tls(ca=paths["ca.pem"], cert=paths["client.pem"], key=paths["client.key"].read_bytes(), domain="localhost")


def test_the_client_speaks_mutual_tls(tls_node):
    addr, paths = tls_node
    with Client(addr, tls=mutual(paths), timeout=RPC_TIMEOUT_S) as node:
        record = node.submit("echo", b"over tls")
    assert record.decided and record.value == b"over tls" and record.verify().valid

    async def run():
        async with AsyncClient(f"https://{addr}", tls=mutual(paths), timeout=RPC_TIMEOUT_S) as node:
            return await node.info()

    assert asyncio.run(run()).capabilities == ("echo",)


def test_without_a_client_certificate_or_tls_the_node_refuses(tls_node):
    addr, paths = tls_node
    with Client(addr, tls=Tls(ca=paths["ca.pem"], domain="localhost"), timeout=10) as node:
        with pytest.raises(PolityError):
            node.info()
    with Client(addr, timeout=10) as node:  # plaintext to a TLS port
        with pytest.raises(PolityError):
            node.info()


def test_the_cli_takes_host_and_port_with_tls_flags(tls_node):
    addr, paths = tls_node
    flags = ["--tls-ca", str(paths["ca.pem"]), "--tls-domain", "localhost",
             "--tls-cert", str(paths["client.pem"]), "--tls-key", str(paths["client.key"])]
    result = subprocess.run(
        [str(bin_dir() / "polity"), "submit", "--addr", addr, *flags, "--capability", "echo", "--payload", "cli"],
        capture_output=True, text=True, timeout=RPC_TIMEOUT_S,
    )
    assert result.returncode == 0 and "DECIDED" in result.stdout, result.stdout + result.stderr
