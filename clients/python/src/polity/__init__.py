"""Polity from Python: a gRPC client for a Polity node and an independent verifier
of its certificate chains.

    from polity import Client
    with Client("127.0.0.1:7001") as client:
        record = client.submit("sha256", b"hello", scope="global", replication=3)
        print(record.value, record.verify())

- `polity.Client` / `polity.AsyncClient` (`polity.client`): submit, get, watch,
  peers, topology over the node's `polity.v1.Federation` service. Needs grpcio and
  the stubs generated from `proto/polity/v1/*.proto` when the package is built.
- `polity.verify`: the verifier of SIGNING.md (PyNaCl and the standard library
  only). Importing it does not import grpcio, protobuf or the stubs.
"""

from typing import Any

__all__ = [
    "AsyncClient",
    "Client",
    "Event",
    "NodeInfo",
    "Peer",
    "PolityError",
    "Record",
    "Tls",
    "Topology",
]

# The client (and through it grpcio and the generated stubs) loads on first use, so
# that `polity.verify` works where only PyNaCl is installed (scripts/verify_chain.py).


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'polity' has no attribute {name!r}")
