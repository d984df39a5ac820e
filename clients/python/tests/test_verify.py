"""The verifier on the JSON export of real chains (SIGNING.md "JSON form"): the
package's API, its command line, and scripts/verify_chain.py (the same verifier,
run from the checkout) agree, and refuse what was changed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from polity import Client
from polity.verify import Unusable, certificate_digest, verify_certificate_bytes, verify_export

from conftest import AGENT_DEADLINE_MS, CLIENT, REPO, RPC_TIMEOUT_S, TOKEN, LiveTestnet

SCRIPT = REPO / "scripts" / "verify_chain.py"


@pytest.fixture(scope="module")
def exported(testnet: LiveTestnet, tmp_path_factory: pytest.TempPathFactory):
    """A raft chain over both continents, with its JSON export written by `polity get
    --certificate-json-out`, and the record the Python client read."""
    with Client(testnet.nodes[4], token=TOKEN, timeout=RPC_TIMEOUT_S) as node:
        record = node.submit(
            "arith", "(1 + 2) / 4", scope="global", replication=3, path="raft", nonce=5, deadline_ms=AGENT_DEADLINE_MS
        )
    assert record.decided, record.error
    out = tmp_path_factory.mktemp("export") / "chain.json"
    testnet.polity_cli(
        "get", record.task_id_hex, "--addr", testnet.nodes[4], "--token-file", str(testnet.token_file),
        "--certificate-json-out", str(out),
    )
    return record, out


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, timeout=120)


def test_the_export_verifies_from_its_bytes_and_matches_the_record(exported, testnet: LiveTestnet):
    record, path = exported
    export = json.loads(path.read_text())
    verdict = verify_export(export, testnet.federation)
    assert verdict.valid, verdict.reason
    assert verdict.value == b"3/4" == record.value
    assert verdict.membership_checked
    # The client's re-encoding of the root is the node's exact bytes.
    assert bytes.fromhex(export["bytes"]) == record.certificate_bytes
    assert bytes.fromhex(export["digest"]) == certificate_digest(record.certificate_bytes) == verdict.root_digest
    assert verify_certificate_bytes(record.certificate_bytes, testnet.federation).describe() == verdict.describe()


def test_the_command_lines_agree(exported, testnet: LiveTestnet, tmp_path):
    _, path = exported
    federation = tmp_path / "federation.pb"
    federation.write_bytes(testnet.federation)
    outputs = []
    for command in ([str(SCRIPT)], ["-m", "polity.verify"]):
        result = run(*command, "--federation", str(federation), str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)
        without = run(*command, stdin=path.read_text())
        assert without.returncode == 0 and without.stdout.startswith("valid\nglobal 'global' decided \"3/4\" on raft")
    assert outputs[0] == outputs[1]
    assert "members checked against federation 'testnet', registry epoch 0" in outputs[0]


def test_a_changed_signature_or_value_is_invalid(exported):
    _, path = exported
    export = json.loads(path.read_text())
    root = bytearray.fromhex(export["bytes"])
    signature = bytes.fromhex(export["report"]["signature"])
    at = root.find(signature)
    assert at > 0
    root[at + 5] ^= 0x40
    forged = {**export, "bytes": root.hex()}
    # The other fields no longer agree with the bytes: unusable, exit 2.
    with pytest.raises(Unusable):
        verify_export(forged)
    result = run(str(SCRIPT), stdin=json.dumps(forged))
    assert result.returncode == 2 and result.stdout.startswith("unusable input:")
    # Bytes alone, as a verifier must judge them: a bad signature, exit 1.
    verdict = verify_certificate_bytes(bytes(root))
    assert not verdict.valid and "signature" in verdict.reason
    # The same through the export, with its views made to agree with the bytes.
    consistent = {**forged, "report": {**export["report"], "signature": bytes(root[at : at + 64]).hex()}}
    consistent["digest"] = certificate_digest(bytes(root)).hex()
    result = run(str(SCRIPT), stdin=json.dumps(consistent))
    assert result.returncode == 1 and result.stdout.startswith("invalid: "), result.stdout


def test_another_federation_refuses_the_chain(exported, tmp_path):
    _, path = exported
    # A federation file of a one-node dev federation: valid, but not this chain's.
    other = tmp_path / "other.pb"
    result = run(str(SCRIPT), "--federation", str(other), str(path))
    assert result.returncode == 2  # missing file: unusable
    other.write_bytes(b"\x0a\x00")  # an EpochChain with an empty genesis
    result = run(str(SCRIPT), "--federation", str(other), str(path))
    assert result.returncode == 1 and result.stdout.startswith("invalid: federation:"), result.stdout


def test_the_verifier_needs_neither_grpc_nor_protobuf():
    code = (
        "import sys; sys.path.insert(0, %r); import polity.verify; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')]; "
        "assert not bad, bad" % str(CLIENT / "src")
    )
    result = run("-c", code)
    assert result.returncode == 0, result.stderr
