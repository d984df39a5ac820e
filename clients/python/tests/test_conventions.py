"""gRPC and CLI conventions on real nodes: server reflection in both protocols, and
`host:port` wherever the CLI takes an endpoint."""

from __future__ import annotations

import json
import subprocess

import grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from conftest import TOKEN, LiveTestnet

SERVICES = {"polity.v1.Federation", "polity.v1.Admin", "grpc.health.v1.Health"}


def test_grpcio_reflection_lists_and_describes_the_services(testnet: LiveTestnet):
    # grpcio-reflection speaks grpc.reflection.v1alpha only.
    with grpc.insecure_channel(testnet.nodes[0]) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        federation = database.FindFileContainingSymbol("polity.v1.Federation")
    assert SERVICES <= services, services
    assert "polity/v1/federation.proto" == federation.name
    assert "SubmitTask" in {method.name for method in federation.service[0].method}


def test_reflection_v1_answers_too(testnet: LiveTestnet):
    # v1's messages are v1alpha's under another package name: the same bytes.
    with grpc.insecure_channel(testnet.nodes[1]) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        replies = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30))
    assert SERVICES <= {service.name for service in replies[0].list_services_response.service}


def test_the_cli_takes_host_and_port(testnet: LiveTestnet):
    token = ["--token-file", str(testnet.token_file)]
    addr = testnet.nodes[2]
    assert "://" not in addr
    submitted = testnet.polity_cli("submit", "--addr", addr, *token, "--capability", "arith", "--payload", "6*7",
        "--deadline-ms", "60000")
    assert "DECIDED" in submitted.stdout and '"42"' in submitted.stdout, submitted.stdout
    info = testnet.polity_cli("info", "--addr", addr, *token)
    assert "region" in info.stdout
    # With a TLS flag a bare host:port means https://; this node speaks plaintext.
    tls = testnet.polity_cli("info", "--addr", addr, "--tls-domain", "node", *token, check=False)
    assert tls.returncode != 0 and f"https://{addr}" in tls.stderr, tls.stderr
    # A URL keeps its scheme.
    assert testnet.polity_cli("info", "--addr", f"http://{addr}", *token).returncode == 0


def test_bench_takes_host_and_port(testnet: LiveTestnet):
    bench = subprocess.run(
        [
            str(testnet.testnet), "bench", "--endpoint", testnet.nodes[3], "--token", TOKEN,
            "--count", "5", "--warmup", "0", "--concurrency", "2", "--connections", "1", "--json",
        ],
        capture_output=True, text=True, timeout=120,
    )
    assert bench.returncode == 0, bench.stdout + bench.stderr
    assert json.loads(bench.stdout)["outcomes"]["decided"] == 5, bench.stdout
