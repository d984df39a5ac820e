"""The examples, run as a user would: the agent as a node's `exec:` executor, and
the fan-out script against the testnet."""

from __future__ import annotations

import json
import subprocess
import sys

from polity import Client

from conftest import AGENT, AGENT_DEADLINE_MS, CLIENT, RPC_TIMEOUT_S, TOKEN, LiveTestnet

FAN_OUT = CLIENT / "examples" / "fan_out.py"


def agent(question: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(AGENT)], input=question.encode(), capture_output=True, timeout=30)


def test_the_agent_answers_arithmetic_exactly_and_refuses_the_rest():
    for question, answer in [("What is (2 + 3) * 7?", b"35"), ("7/2", b"7/2"), ("2 ** -2", b"1/4"), ("0.1 + 0.2", b"3/10")]:
        result = agent(question)
        assert (result.returncode, result.stdout) == (0, answer), (question, result)
    too_much = ["((9 ** 512) ** 512) ** 512", "+".join(["1"] * 20000), "9" * 6000]
    for question in ["hello", "1/0", "__import__('os').system('true')", "2 ** 100000", "1 +", *too_much]:
        result = agent(question)
        assert result.returncode == 1 and result.stdout == b"" and b"refused" in result.stderr, (question, result)


#: Tasks every agent refuses are not decided whatever the time; they get little of it.
REFUSED_DEADLINE_MS = 3000


def test_a_task_the_agents_refuse_is_not_decided(testnet: LiveTestnet):
    with Client(testnet.nodes[5], token=TOKEN, timeout=RPC_TIMEOUT_S) as node:
        record = node.submit("arith", "no numbers here", replication=3, nonce=6, deadline_ms=REFUSED_DEADLINE_MS)
    assert record.state == "FAILED", record
    assert record.value == b"" and record.error


def fan_out(
    testnet: LiveTestnet, federation, *payloads: str, deadline_ms: int = AGENT_DEADLINE_MS
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable, str(FAN_OUT), "--addr", testnet.nodes[0], "--addr", f"http://{testnet.nodes[1]}",
            "--token-file", str(testnet.token_file), "--capability", "arith", "--scope", "global",
            "--replication", "3", "--federation", str(federation), "--concurrency", "4",
            "--deadline-ms", str(deadline_ms), *payloads,
        ],
        capture_output=True, text=True, timeout=300,
    )


def test_fan_out_collects_verified_answers(testnet: LiveTestnet, tmp_path):
    federation = tmp_path / "federation.pb"
    federation.write_bytes(testnet.federation)
    questions = {f"What is {n} * {n + 1}?": str(n * (n + 1)) for n in range(8)}
    result = fan_out(testnet, federation, *questions)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["payload"] for line in lines] == list(questions)
    for line in lines:
        assert line["ok"] and line["membership_checked"], line
        assert line["answer"] == questions[line["payload"]]


def test_fan_out_fails_when_an_answer_is_missing_or_unverifiable(testnet: LiveTestnet, tmp_path):
    federation = tmp_path / "federation.pb"
    federation.write_bytes(testnet.federation)
    result = fan_out(testnet, federation, "no question", deadline_ms=REFUSED_DEADLINE_MS)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = (json.loads(line) for line in result.stdout.splitlines())
    assert not line["ok"] and line["state"] == "FAILED", line
    # Against a federation the chain was not drawn from, nothing verifies.
    forged = bytearray(testnet.federation)
    forged[-1] ^= 1
    federation.write_bytes(bytes(forged))
    result = fan_out(testnet, federation, "6 * 7")
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = (json.loads(line) for line in result.stdout.splitlines())
    assert line["state"] == "DECIDED" and not line["ok"] and "certificate invalid" in line["error"], line
