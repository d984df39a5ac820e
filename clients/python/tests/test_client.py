"""The client against real nodes: every call, the token, and verification of what
the nodes answer (and refusal of what they could lie about)."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest

from polity import AsyncClient, Client, PolityError, Tls
from polity.client import endpoint, submit_request, task_id_bytes
from polity.verify import Unusable

from conftest import AGENT_DEADLINE_MS, RPC_TIMEOUT_S, TOKEN, LiveTestnet


def client(testnet: LiveTestnet, index: int = 0, **options) -> Client:
    return Client(testnet.nodes[index], token=TOKEN, timeout=RPC_TIMEOUT_S, **options)


# --- Without a node ------------------------------------------------------------------


def test_endpoints_are_written_as_the_cli_takes_them():
    assert endpoint("127.0.0.1:7001") == ("127.0.0.1:7001", False)
    assert endpoint("127.0.0.1:7001", tls=True) == ("127.0.0.1:7001", True)
    assert endpoint("127.0.0.1:7001", tls=Tls(domain="node")) == ("127.0.0.1:7001", True)
    assert endpoint("http://[::1]:7001/") == ("[::1]:7001", False)
    assert endpoint(" https://node.example:7001\n") == ("node.example:7001", True)
    for bad, tls in [
        ("ftp://h:1", None),
        ("https://h:1", False),
        ("http://h:1", True),
        ("http://h:1/path", None),
        ("", None),
        ("user@h:1", None),
    ]:
        with pytest.raises(ValueError):
            endpoint(bad, tls)


def test_requests_carry_the_options_as_polity_submit_does():
    request = submit_request(
        "sha256", "hé", scope="continent:eu", replication=3, aggregation="median", path="raft",
        adversarial_risk=0.25, deadline_ms=5000, nonce=9, wait=False,
    )
    assert request.payload == "hé".encode()
    assert (request.scope.level, request.scope.name) == (2, "eu")
    assert (request.replication, request.aggregation, request.policy.path_override) == (3, 3, 2)
    assert (request.policy.adversarial_risk, request.deadline_ms, request.nonce, request.wait) == (0.25, 5000, 9, False)
    assert not submit_request("sha256", b"").HasField("scope")
    for bad in [{"scope": "planet"}, {"scope": "global:x"}, {"aggregation": "mean"}, {"path": "paxos"}]:
        with pytest.raises(ValueError):
            submit_request("sha256", b"", **bad)
    with pytest.raises(ValueError):
        task_id_bytes("ab" * 31)


def test_the_installed_stubs_are_the_checkouts_protos():
    # The stubs are generated when the package is built: a stale install (built from
    # older protos) would miss what the checkout's protos declare.
    import re

    from polity.v1 import federation_pb2, wire_pb2

    from conftest import REPO

    text = (REPO / "proto" / "polity" / "v1" / "federation.proto").read_text()
    methods = set(re.findall(r"^\s*rpc (\w+)\(", text, re.M))
    service = federation_pb2.DESCRIPTOR.services_by_name["Federation"]
    assert methods and methods == {method.name for method in service.methods}
    wire = (REPO / "proto" / "polity" / "v1" / "wire.proto").read_text()
    messages = set(re.findall(r"^message (\w+) \{", wire, re.M))
    assert messages == set(wire_pb2.DESCRIPTOR.message_types_by_name)


# --- Against the testnet -------------------------------------------------------------


@pytest.mark.parametrize("path", ["bft", "raft", "stake"])
def test_a_global_task_is_decided_and_its_chain_verifies_against_the_federation(testnet: LiveTestnet, path: str):
    with client(testnet, index=1) as node:
        record = node.submit("sha256", b"hello", scope="global", replication=3, path=path)
    assert record.state == "DECIDED", record.error
    assert record.text == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    verdict = record.verify(testnet.federation)
    assert verdict.valid, verdict.reason
    assert verdict.membership_checked and verdict.epoch.number == 0
    assert (verdict.summary.level, verdict.summary.certificates) == (3, 5)  # global, 2 continents, 2 regions
    assert verdict.value == record.value
    assert record.verify(testnet.dir / "node-0" / "federation.pb").membership_checked
    # The offline verdict without the anchor: valid, membership not checked.
    assert record.verify().valid and not record.verify().membership_checked


def test_get_and_watch_return_the_decided_record(testnet: LiveTestnet):
    with client(testnet) as node:
        submitted = node.submit("echo", b"watch me", replication=2, nonce=1)
        assert submitted.decided, submitted.error
        fetched = node.get(submitted.task_id_hex)
        assert (fetched.task_id, fetched.value, fetched.certificate_bytes) == (
            submitted.task_id, b"watch me", submitted.certificate_bytes,
        )
        assert fetched.verify(testnet.federation).valid
        events = list(node.watch(submitted.task_id))
    assert events[-1].kind == "FINAL"
    assert events[-1].record.value == b"watch me"
    assert events[-1].record.verify(testnet.federation).valid


def test_watch_follows_a_running_task_to_its_end(testnet: LiveTestnet):
    with client(testnet, index=2) as node:
        running = node.submit(
            "arith", "What is 6 * 7?", scope="global", replication=3, nonce=2, wait=False,
            deadline_ms=AGENT_DEADLINE_MS,
        )
        assert running.state in ("RUNNING", "DECIDED")
        assert running.certificate_bytes == b"" or running.decided
        kinds = []
        for event in node.watch(running.task_id):
            kinds.append(event.kind)
            assert event.task_id == running.task_id
        final = event.record
    assert kinds[-1] == "FINAL" and kinds.count("FINAL") == 1
    assert final.value == b"42" and final.verify(testnet.federation).valid


def test_peers_topology_info_and_federation(testnet: LiveTestnet):
    with client(testnet) as node:
        info = node.info()
        peers = node.peers()
        compatible = node.peers("arith", compatible=True)
        topology = node.topology()
        federation = node.federation()
    assert info.region in testnet.regions and "arith" in info.capabilities
    assert len(peers) == len(testnet.nodes) - 1
    assert {peer.public_key for peer in peers}.isdisjoint({info.public_key})
    assert all("arith" in peer.capabilities for peer in compatible) and compatible
    placed = list(topology.nodes())
    assert len(placed) == len(testnet.nodes)
    assert sorted({region for _, region, _ in placed}) == testnet.regions
    assert sum(node.is_self for _, _, node in placed) == 1
    assert federation == testnet.federation


def test_a_call_without_the_token_is_refused(testnet: LiveTestnet):
    with Client(testnet.nodes[0], timeout=RPC_TIMEOUT_S) as node:
        with pytest.raises(PolityError) as refused:
            node.info()
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(testnet.nodes[0], token="wrong", timeout=RPC_TIMEOUT_S) as node:
        with pytest.raises(PolityError):
            node.peers()
    with Client(testnet.nodes[0], token_file=testnet.token_file, timeout=RPC_TIMEOUT_S) as node:
        assert node.info().peer_id


def test_an_invalid_request_is_an_error_with_its_reason(testnet: LiveTestnet):
    with client(testnet) as node:
        with pytest.raises(PolityError) as refused:
            node.submit("no-such-capability!", b"x")
        with pytest.raises(PolityError) as unknown:
            node.get(bytes(32))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND


def test_what_a_node_could_lie_about_does_not_verify(testnet: LiveTestnet):
    with client(testnet) as node:
        record = node.submit("sha256", b"lies", replication=2, nonce=3)
        other = node.submit("sha256", b"other", replication=2, nonce=3)
    assert record.verify(testnet.federation).valid and other.verify(testnet.federation).valid
    # Another value than the chain decided.
    lied = dataclasses.replace(record, value=b"0" * 64).verify(testnet.federation)
    assert not lied.valid and "another value" in lied.reason
    # A valid chain of another task, answered to this submission.
    swapped = dataclasses.replace(other, asked=record.asked, task_id=other.task_id).verify()
    assert not swapped.valid and "another task than the one submitted (payload)" in swapped.reason
    # ... or to a get of this task id.
    fetched = dataclasses.replace(record, certificate_bytes=other.certificate_bytes).verify()
    assert not fetched.valid and "another task id" in fetched.reason
    # A chain whose bytes were changed.
    flipped = bytearray(record.certificate_bytes)
    flipped[-40] ^= 1
    tampered = dataclasses.replace(record, certificate_bytes=bytes(flipped))
    try:
        assert not tampered.verify().valid
    except Unusable:
        pass  # the flip broke the encoding itself: not a chain either
    # A federation file that is not the one the chain was drawn from.
    forged = bytearray(testnet.federation)
    forged[-1] ^= 1
    assert not record.verify(bytes(forged)).valid


def test_the_asyncio_client_submits_and_watches(testnet: LiveTestnet):
    async def run():
        async with AsyncClient(testnet.nodes[3], token=TOKEN, timeout=RPC_TIMEOUT_S) as node:
            records = await asyncio.gather(
                *(
                    node.submit(
                        "arith", f"{n} * {n}", scope="global", replication=3, nonce=4, deadline_ms=AGENT_DEADLINE_MS
                    )
                    for n in range(4)
                )
            )
            events = [event async for event in node.watch(records[0].task_id)]
            peers = await node.peers()
            topology = await node.topology()
            fetched = await node.get(records[1].task_id)
        return records, events, peers, topology, fetched

    records, events, peers, topology, fetched = asyncio.run(run())
    assert [record.value for record in records] == [b"0", b"1", b"4", b"9"]
    assert all(record.verify(testnet.federation).valid for record in records)
    assert events[-1].kind == "FINAL" and events[-1].record.value == b"0"
    assert len(peers) == len(testnet.nodes) - 1 and len(list(topology.nodes())) == len(testnet.nodes)
    assert fetched.value == b"1" and fetched.verify(testnet.federation).valid
