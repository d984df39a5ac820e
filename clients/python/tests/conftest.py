"""A real testnet for the tests: `polity-testnet up --detach` with 6 nodes in 2
regions on 2 continents, an API token, and the Python agent of examples/agent.py
as capability `arith`; brought down at the end of the session.

The binaries come from $POLITY_BIN_DIR, else $CARGO_TARGET_DIR/debug, else the
checkout's target/debug (`cargo build --bins`). Nothing here skips: when the
binaries are missing or the testnet does not come up, the tests fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List

import pytest

CLIENT = Path(__file__).resolve().parent.parent
REPO = CLIENT.parent.parent
AGENT = CLIENT / "examples" / "agent.py"
TOKEN = "pytest-token-7f3a"
#: Every RPC a test makes gives up after this many seconds.
RPC_TIMEOUT_S = 120.0
#: The deadline of tasks that run the Python agent: a busy 2-core CI machine starts
#: Python slowly, so the agent's tasks get time (and the nodes longer levels, below).
AGENT_DEADLINE_MS = 60_000
#: Per-level budgets of the nodes (`[tasks]` of node.toml), longer than the defaults
#: (4 s, 3 s, 3 s) for the same reason; the sum stays below AGENT_DEADLINE_MS.
NODE_CONFIG = """
[tasks]
region_timeout_ms = 20000
continent_timeout_ms = 12000
global_timeout_ms = 12000
"""
UP_TIMEOUT_S = 180


def bin_dir() -> Path:
    if os.environ.get("POLITY_BIN_DIR"):
        return Path(os.environ["POLITY_BIN_DIR"])
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"


@dataclass
class LiveTestnet:
    dir: Path
    polity: Path
    testnet: Path
    token_file: Path
    #: gRPC endpoints as `host:port`, node-0 first.
    nodes: List[str]
    regions: List[str]

    @property
    def federation(self) -> bytes:
        """node-0's federation file: the trust anchor of the tests."""
        return (self.dir / "node-0" / "federation.pb").read_bytes()

    def polity_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(self.polity), *args], capture_output=True, text=True, timeout=RPC_TIMEOUT_S
        )
        if check and result.returncode != 0:
            raise AssertionError(f"polity {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result


@pytest.fixture(scope="session")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> LiveTestnet:
    binaries = bin_dir()
    polity, testnet_binary = binaries / "polity", binaries / "polity-testnet"
    missing = [str(path) for path in (polity, testnet_binary) if not path.is_file()]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `cargo build --bins` or set POLITY_BIN_DIR")
    root = tmp_path_factory.mktemp("testnet")
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    node_config = root / "node.toml"
    node_config.write_text(NODE_CONFIG)
    directory = root / "net"
    up = [
        str(testnet_binary), "up", "--detach", "--dir", str(directory),
        "--nodes", "6", "--regions", "2", "--continents", "2",
        "--capability", "sha256=builtin:sha256",
        "--capability", "echo=builtin:echo",
        "--capability", f"arith=exec:{sys.executable} {AGENT}",
        f"--node-arg=--api-token-file={token_file}",
        f"--node-arg=--config={node_config}",
    ]
    result = subprocess.run(up, capture_output=True, text=True, timeout=UP_TIMEOUT_S)
    try:
        if result.returncode != 0:
            pytest.fail(f"polity-testnet up failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        state = json.loads((directory / "testnet.json").read_text())
        nodes = [node["grpc"].split("://", 1)[1] for node in state["nodes"]]
        regions = sorted({node["region"] for node in state["nodes"]})
        yield LiveTestnet(directory, polity, testnet_binary, token_file, nodes, regions)
    finally:
        stop(testnet_binary, directory)


def stop(testnet_binary: Path, directory: Path) -> None:
    """`polity-testnet down`; whatever it leaves running of this testnet is killed."""
    subprocess.run(
        [str(testnet_binary), "down", "--dir", str(directory)], capture_output=True, timeout=120
    )
    state_file = directory / "testnet.json"
    if not state_file.exists():
        return
    for node in json.loads(state_file.read_text()).get("nodes", []):
        try:
            os.kill(int(node["pid"]), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, ValueError):
            pass
