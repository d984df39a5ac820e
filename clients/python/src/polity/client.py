"""A typed client of a Polity node's gRPC API (`polity.v1.Federation`).

    with Client("127.0.0.1:7001", token="…") as client:
        record = client.submit("sha256", b"hello", scope="global", replication=3)
        verdict = record.verify(federation=open("federation.pb", "rb").read())
        for event in client.watch(record.task_id): ...

    async with AsyncClient("127.0.0.1:7001") as client:
        record = await client.submit("sha256", b"hello")
        async for event in client.watch(record.task_id): ...

Endpoints are written as the `polity` CLI takes them: `host:port` (plaintext, or TLS
when `tls` is given), `http://host:port` or `https://host:port`. The token goes in
the `authorization: Bearer <token>` header, as the node's gate expects.

What a node says is not trusted by this module: `Record.verify()` checks the
certificate chain with `polity.verify` (written from SIGNING.md, independent of the
node's code), that it certifies the task that was asked for, and that the value the
node reported is the value the chain decided.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio

from . import verify as verifier
from .v1 import federation_pb2 as pb
from .v1 import federation_pb2_grpc as pb_grpc
from .v1 import wire_pb2

#: The largest reply accepted (a certificate chain of a big federation), as the CLI.
MESSAGE_BYTES_MAX = 64 << 20
#: A token file is read up to this size.
TOKEN_BYTES_MAX = 4096

Bytes = Union[bytes, bytearray, str]
Pem = Union[bytes, str, os.PathLike]


class PolityError(Exception):
    """A call the node refused or that failed; `code` is the gRPC status code."""

    def __init__(self, code: Optional[grpc.StatusCode], message: str) -> None:
        super().__init__(f"{code.name if code else 'error'}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Tls:
    """TLS to the node: a CA to trust (default: the system's roots), a client
    certificate and key for nodes that require mutual TLS, and the server name to
    expect in the node's certificate (default: the host of the endpoint). Each PEM is
    its bytes or a path."""

    ca: Optional[Pem] = None
    cert: Optional[Pem] = None
    key: Optional[Pem] = None
    domain: Optional[str] = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca), private_key=_pem(self.key), certificate_chain=_pem(self.cert)
        )


def _pem(value: Optional[Pem]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def endpoint(addr: str, tls: Union[None, bool, Tls] = None) -> Tuple[str, bool]:
    """(gRPC target `host:port`, whether TLS is used) for an endpoint written as the
    CLI takes it: `host:port` is plaintext unless `tls` is given, `http://` is
    plaintext, `https://` is TLS."""
    text = addr.strip()
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme not in ("http", "https"):
            raise ValueError(f"endpoint {addr!r}: the scheme is http:// or https://")
        secure = scheme == "https"
        if tls is False and secure:
            raise ValueError(f"endpoint {addr!r} is https:// but tls=False")
        if tls not in (None, False) and not secure:
            raise ValueError(f"endpoint {addr!r} is http:// but TLS options were given")
    else:
        rest, secure = text, tls not in (None, False)
    target = rest.rstrip("/")
    if not target or "/" in target or "@" in target or any(c.isspace() for c in target):
        raise ValueError(f"endpoint {addr!r}: expected host:port")
    return target, secure


def read_token(path: Union[str, os.PathLike]) -> str:
    """A token file's token (surrounding whitespace removed), as `--token-file`."""
    with open(path, "rb") as file:
        return file.read(TOKEN_BYTES_MAX).decode("ascii").strip()


def _options(tls: Union[None, bool, Tls]) -> List[Tuple[str, Any]]:
    options: List[Tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
        ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
    ]
    if isinstance(tls, Tls) and tls.domain:
        options.append(("grpc.ssl_target_name_override", tls.domain))
    return options


def _credentials(tls: Union[None, bool, Tls]) -> grpc.ChannelCredentials:
    return tls.credentials() if isinstance(tls, Tls) else grpc.ssl_channel_credentials()


# --- Requests ------------------------------------------------------------------------

LEVELS = {"region": wire_pb2.LEVEL_REGION, "continent": wire_pb2.LEVEL_CONTINENT, "global": wire_pb2.LEVEL_GLOBAL}
AGGREGATIONS = {
    "majority": wire_pb2.AGGREGATION_MAJORITY,
    "tally": wire_pb2.AGGREGATION_TALLY,
    "median": wire_pb2.AGGREGATION_MEDIAN,
    "first-valid": wire_pb2.AGGREGATION_FIRST_VALID,
}
PATHS = {"bft": wire_pb2.CONSENSUS_PATH_BFT, "raft": wire_pb2.CONSENSUS_PATH_RAFT, "stake": wire_pb2.CONSENSUS_PATH_STAKE}


def _payload(payload: Bytes) -> bytes:
    return payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)


def parse_scope(text: str) -> wire_pb2.Scope:
    """`region[:NAME]`, `continent[:NAME]` or `global`, as `polity submit --scope`."""
    kind, _, name = text.partition(":")
    if kind not in LEVELS or (kind == "global" and name):
        raise ValueError(f"scope {text!r}: use region[:NAME], continent[:NAME] or global")
    return wire_pb2.Scope(level=LEVELS[kind], name=name)


def submit_request(
    capability: str,
    payload: Bytes,
    *,
    scope: Optional[str] = None,
    replication: int = 1,
    aggregation: str = "majority",
    path: Optional[str] = None,
    adversarial_risk: float = 0.0,
    consistency: float = 0.0,
    deadline_ms: int = 0,
    nonce: int = 0,
    wait: bool = True,
) -> pb.SubmitTaskRequest:
    """The request `polity submit` sends for the same options."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation {aggregation!r}: use {', '.join(AGGREGATIONS)}")
    if path is not None and path not in PATHS:
        raise ValueError(f"path {path!r}: use bft, raft or stake")
    request = pb.SubmitTaskRequest(
        capability=capability,
        payload=_payload(payload),
        replication=replication,
        aggregation=AGGREGATIONS[aggregation],
        policy=wire_pb2.RiskPolicy(
            adversarial_risk=adversarial_risk,
            consistency=consistency,
            path_override=PATHS[path] if path else wire_pb2.CONSENSUS_PATH_UNSPECIFIED,
        ),
        deadline_ms=deadline_ms,
        nonce=nonce,
        wait=wait,
    )
    if scope is not None:
        request.scope.CopyFrom(parse_scope(scope))
    return request


def task_id_bytes(task_id: Bytes) -> bytes:
    """A task id from its 32 bytes or 64 hex digits."""
    if isinstance(task_id, str):
        try:
            task_id = bytes.fromhex(task_id)
        except ValueError as error:
            raise ValueError("a task id is 64 hex digits") from error
    if len(task_id) != 32:
        raise ValueError("a task id is 32 bytes (64 hex digits)")
    return bytes(task_id)


# --- Replies -------------------------------------------------------------------------


def _enum_word(enum: Any, number: int, prefix: str) -> str:
    try:
        return enum.Name(number)[len(prefix) :]
    except ValueError:
        return str(number)


@dataclass(frozen=True)
class Asked:
    """What the client asked for, to hold the certificate's task against."""

    task_id: Optional[bytes] = None
    request: Optional[pb.SubmitTaskRequest] = None


@dataclass(frozen=True)
class Record:
    """A task as the node reports it. Nothing here is verified until `verify()`."""

    task_id: bytes
    #: RUNNING, DECIDED, DEGRADED or FAILED.
    state: str
    #: The value the node reports (`verify()` checks it against the chain).
    value: bytes
    error: str
    degraded_reason: str
    #: The root certificate's protobuf encoding (b"" while there is none).
    certificate_bytes: bytes
    entry_node: str
    submitted_at_ms: int
    finished_at_ms: int
    #: The whole reply (`polity.v1.TaskRecord`), for the fields not copied here.
    message: pb.TaskRecord = field(repr=False, compare=False)
    asked: Asked = field(default_factory=Asked, repr=False, compare=False)

    @classmethod
    def of(cls, message: pb.TaskRecord, asked: Asked = Asked()) -> "Record":
        # The root travels as a message; its children as their exact bytes. Encoding
        # the root again gives the node's bytes when the node encoded canonically
        # (fields in order, as prost does); signatures cover the statements' carried
        # bytes, so they are not affected either way.
        certificate = message.certificate.SerializeToString() if message.HasField("certificate") else b""
        return cls(
            task_id=bytes(message.task_id),
            state=_enum_word(pb.TaskState, message.state, "TASK_STATE_"),
            value=bytes(message.value),
            error=message.error,
            degraded_reason=message.degraded_reason,
            certificate_bytes=certificate,
            entry_node=message.entry_node,
            submitted_at_ms=message.submitted_at_ms,
            finished_at_ms=message.finished_at_ms,
            message=message,
            asked=asked,
        )

    @property
    def task_id_hex(self) -> str:
        return self.task_id.hex()

    @property
    def decided(self) -> bool:
        return self.state == "DECIDED"

    @property
    def text(self) -> str:
        """The reported value as text (undecodable bytes replaced)."""
        return self.value.decode("utf-8", errors="replace")

    def verify(self, federation: Union[None, bytes, str, os.PathLike] = None) -> verifier.Verdict:
        """Verifies the chain offline (`polity.verify`; membership too, against a
        federation file's bytes when given), and that it answers what was asked: its
        task id is the record's (and the one asked for), its task is the one
        submitted (capability, payload, nonce, scope, replication, aggregation,
        policy), and its value is the value reported. `federation` is a federation
        file's bytes or its path. Raises `verify.Unusable` when there is no
        certificate or it does not decode."""
        if not self.certificate_bytes:
            raise verifier.Unusable(f"task {self.task_id_hex} has no certificate (state {self.state})")
        if isinstance(federation, (str, os.PathLike)):
            with open(federation, "rb") as file:
                federation = file.read(verifier.FEDERATION_BYTES_MAX + 1)
        verdict = verifier.verify_certificate_bytes(self.certificate_bytes, federation)
        if not verdict.valid:
            return verdict
        problem = self._mismatch(verdict)
        if problem:
            return verifier.Verdict(valid=False, reason=problem, root_digest=verdict.root_digest)
        return verdict

    def _mismatch(self, verdict: verifier.Verdict) -> str:
        root = verifier.decode_certificate(self.certificate_bytes)
        certified = verifier.task_id(root.task)
        if certified != self.task_id:
            return "the certificate is for another task id than the record's"
        if self.asked.task_id is not None and certified != self.asked.task_id:
            return "the certificate is for another task than the one asked for"
        if self.asked.request is not None:
            problem = _task_problem(self.asked.request, verifier.decode(verifier.TASK_SPEC, root.task, "task"))
            if problem:
                return f"the node certified another task than the one submitted ({problem})"
        if verdict.value != self.value:
            return "the node reported another value than the chain decided"
        return ""


def _task_problem(request: pb.SubmitTaskRequest, task: verifier.Message) -> str:
    """Which submitted field the certified task (decoded by the verifier) does not
    carry; fields the node fills in when left unset (scope, replication, deadline) are
    compared only when they were set."""
    policy = task.policy
    asked_policy = request.policy
    checks = [
        ("capability", task.capability == request.capability),
        ("payload", task.payload == request.payload),
        ("nonce", task.nonce == request.nonce),
        ("aggregation", verifier.normalize(task.aggregation) == verifier.normalize(request.aggregation)),
        (
            "policy",
            not request.HasField("policy")
            or (
                policy is not None
                and policy.adversarial_risk == asked_policy.adversarial_risk
                and policy.consistency == asked_policy.consistency
                and policy.path_override == asked_policy.path_override
            ),
        ),
        ("replication", request.replication == 0 or task.replication == request.replication),
        (
            "scope",
            not request.HasField("scope")
            or (
                task.scope is not None
                and task.scope.level == request.scope.level
                and (not request.scope.name or task.scope.name == request.scope.name)
            ),
        ),
    ]
    return ", ".join(name for name, same in checks if not same)


@dataclass(frozen=True)
class Event:
    """One progress event of a task (`WatchTask`)."""

    task_id: bytes
    #: DISPATCHED, OBSERVATION, GROUP_DECIDED, GROUP_DEGRADED or FINAL.
    kind: str
    at_ms: int
    #: REGION, CONTINENT, GLOBAL, or "" when the event concerns no group.
    level: str
    group: str
    member: str
    detail: str
    #: The finished record (FINAL only).
    record: Optional[Record] = None

    @classmethod
    def of(cls, message: pb.TaskEvent, asked: Asked = Asked()) -> "Event":
        level = _enum_word(wire_pb2.Level, message.level, "LEVEL_")
        return cls(
            task_id=bytes(message.task_id),
            kind=_enum_word(pb.TaskEventKind, message.kind, "TASK_EVENT_KIND_"),
            at_ms=message.at_ms,
            level="" if level == "UNSPECIFIED" else level,
            group=message.group,
            member=message.member,
            detail=message.detail,
            record=Record.of(message.record, asked) if message.HasField("record") else None,
        )


@dataclass(frozen=True)
class Peer:
    """A peer as the node sees it (`ListPeers`)."""

    peer_id: str
    public_key: str
    region: str
    continent: str
    capabilities: Tuple[str, ...]
    grpc_endpoint: str
    version: str
    trust: float
    rtt_ms: int
    connected: bool
    circuit_open: bool

    @classmethod
    def of(cls, message: pb.PeerEntry) -> "Peer":
        info = message.info
        return cls(
            peer_id=message.peer_id or info.peer_id,
            public_key=bytes(info.public_key).hex(),
            region=info.region,
            continent=info.continent,
            capabilities=tuple(info.capabilities),
            grpc_endpoint=info.grpc_endpoint,
            version=info.version,
            trust=message.trust,
            rtt_ms=message.rtt_ms,
            connected=message.connected,
            circuit_open=message.circuit_open,
        )


@dataclass(frozen=True)
class TopologyNode:
    peer_id: str
    capabilities: Tuple[str, ...]
    grpc_endpoint: str
    trust: float
    connected: bool
    is_self: bool


@dataclass(frozen=True)
class Region:
    name: str
    nodes: Tuple[TopologyNode, ...]


@dataclass(frozen=True)
class Continent:
    name: str
    regions: Tuple[Region, ...]


@dataclass(frozen=True)
class Topology:
    """The federation as the node sees it: continents, regions, nodes (`GetTopology`)."""

    continents: Tuple[Continent, ...]

    @classmethod
    def of(cls, message: pb.Topology) -> "Topology":
        return cls(
            tuple(
                Continent(
                    continent.name,
                    tuple(
                        Region(
                            region.name,
                            tuple(
                                TopologyNode(
                                    node.peer_id,
                                    tuple(node.capabilities),
                                    node.grpc_endpoint,
                                    node.trust,
                                    node.connected,
                                    node.is_self,
                                )
                                for node in region.nodes
                            ),
                        )
                        for region in continent.regions
                    ),
                )
                for continent in message.continents
            )
        )

    def nodes(self) -> Iterator[Tuple[str, str, TopologyNode]]:
        """(continent, region, node) for every node."""
        for continent in self.continents:
            for region in continent.regions:
                for node in region.nodes:
                    yield continent.name, region.name, node


@dataclass(frozen=True)
class NodeInfo:
    """The node's own description (`GetNodeInfo`)."""

    public_key: str
    peer_id: str
    region: str
    continent: str
    capabilities: Tuple[str, ...]
    grpc_endpoint: str
    version: str
    uptime_ms: int
    tasks_stored: int

    @classmethod
    def of(cls, message: pb.GetNodeInfoResponse) -> "NodeInfo":
        info = message.info
        return cls(
            public_key=bytes(info.public_key).hex(),
            peer_id=info.peer_id,
            region=info.region,
            continent=info.continent,
            capabilities=tuple(info.capabilities),
            grpc_endpoint=info.grpc_endpoint,
            version=info.version,
            uptime_ms=message.uptime_ms,
            tasks_stored=message.tasks_stored,
        )


def _error(error: grpc.RpcError) -> PolityError:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return PolityError(code, details or str(error))


# --- The clients ---------------------------------------------------------------------


class _Base:
    def __init__(
        self,
        addr: str = "127.0.0.1:7001",
        *,
        token: Optional[str] = None,
        token_file: Optional[Union[str, os.PathLike]] = None,
        tls: Union[None, bool, Tls] = None,
        timeout: Optional[float] = None,
    ) -> None:
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token_file is not None:
            token = read_token(token_file)
        self.target, self.secure = endpoint(addr, tls)
        self.timeout = timeout
        self._metadata: Sequence[Tuple[str, str]] = (
            (("authorization", f"Bearer {token.strip()}"),) if token else ()
        )
        self._options = _options(tls)
        self._tls = tls

    def _call(self, timeout: Optional[float]) -> Dict[str, Any]:
        return {"metadata": self._metadata, "timeout": timeout if timeout is not None else self.timeout}


class Client(_Base):
    """A blocking client. Use it as a context manager, or call `close()`."""

    def __init__(self, addr: str = "127.0.0.1:7001", **options: Any) -> None:
        super().__init__(addr, **options)
        if self.secure:
            self._channel = grpc.secure_channel(self.target, _credentials(self._tls), self._options)
        else:
            self._channel = grpc.insecure_channel(self.target, self._options)
        self._stub = pb_grpc.FederationStub(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def submit(self, capability: str, payload: Bytes = b"", *, timeout: Optional[float] = None, **options: Any) -> Record:
        """Submits a task (options as `submit_request`: scope, replication,
        aggregation, path, adversarial_risk, consistency, deadline_ms, nonce, wait)
        and returns its record: decided (or failed) when `wait` (the default), else
        RUNNING with its task id."""
        request = submit_request(capability, payload, **options)
        try:
            reply = self._stub.SubmitTask(request, **self._call(timeout))
        except grpc.RpcError as error:
            raise _error(error) from None
        return Record.of(reply, Asked(request=request))

    def get(self, task_id: Bytes, *, timeout: Optional[float] = None) -> Record:
        """The node's record of a task (bytes or hex id)."""
        wanted = task_id_bytes(task_id)
        try:
            reply = self._stub.GetTask(pb.GetTaskRequest(task_id=wanted), **self._call(timeout))
        except grpc.RpcError as error:
            raise _error(error) from None
        return Record.of(reply, Asked(task_id=wanted))

    def watch(self, task_id: Bytes, *, timeout: Optional[float] = None) -> Iterator[Event]:
        """A task's progress events, ending with the FINAL one (its `record` set)."""
        wanted = task_id_bytes(task_id)
        try:
            for message in self._stub.WatchTask(pb.WatchTaskRequest(task_id=wanted), **self._call(timeout)):
                yield Event.of(message, Asked(task_id=wanted))
        except grpc.RpcError as error:
            raise _error(error) from None

    def peers(
        self, capability: str = "", *, region: str = "", continent: str = "", compatible: bool = False,
        timeout: Optional[float] = None,
    ) -> List[Peer]:
        """The peers the node knows (compatible ones ranked best first; `compatible`
        needs a capability)."""
        request = pb.ListPeersRequest(capability=capability, region=region, continent=continent, compatible_only=compatible)
        try:
            reply = self._stub.ListPeers(request, **self._call(timeout))
        except grpc.RpcError as error:
            raise _error(error) from None
        return [Peer.of(peer) for peer in reply.peers]

    def topology(self, *, timeout: Optional[float] = None) -> Topology:
        try:
            return Topology.of(self._stub.GetTopology(pb.GetTopologyRequest(), **self._call(timeout)))
        except grpc.RpcError as error:
            raise _error(error) from None

    def info(self, *, timeout: Optional[float] = None) -> NodeInfo:
        try:
            return NodeInfo.of(self._stub.GetNodeInfo(pb.GetNodeInfoRequest(), **self._call(timeout)))
        except grpc.RpcError as error:
            raise _error(error) from None

    def federation(self, *, timeout: Optional[float] = None) -> bytes:
        """The node's registry chain as a federation file's bytes (`polity genesis
        export`). It is the node's word: for membership checks that mean something,
        prefer a federation file from a source you trust."""
        try:
            return self._stub.GetEpochChain(pb.GetEpochChainRequest(), **self._call(timeout)).SerializeToString()
        except grpc.RpcError as error:
            raise _error(error) from None


class AsyncClient(_Base):
    """The asyncio client (`grpc.aio`): the same calls, awaited; `watch` is an async
    iterator. Use it as an async context manager, or await `close()`."""

    def __init__(self, addr: str = "127.0.0.1:7001", **options: Any) -> None:
        super().__init__(addr, **options)
        if self.secure:
            self._channel = grpc.aio.secure_channel(self.target, _credentials(self._tls), self._options)
        else:
            self._channel = grpc.aio.insecure_channel(self.target, self._options)
        self._stub = pb_grpc.FederationStub(self._channel)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def submit(self, capability: str, payload: Bytes = b"", *, timeout: Optional[float] = None, **options: Any) -> Record:
        request = submit_request(capability, payload, **options)
        try:
            reply = await self._stub.SubmitTask(request, **self._call(timeout))
        except grpc.RpcError as error:
            raise _error(error) from None
        return Record.of(reply, Asked(request=request))

    async def get(self, task_id: Bytes, *, timeout: Optional[float] = None) -> Record:
        wanted = task_id_bytes(task_id)
        try:
            reply = await self._stub.GetTask(pb.GetTaskRequest(task_id=wanted), **self._call(timeout))
        except grpc.RpcError as error:
            raise _error(error) from None
        return Record.of(reply, Asked(task_id=wanted))

    async def watch(self, task_id: Bytes, *, timeout: Optional[float] = None) -> AsyncIterator[Event]:
        wanted = task_id_bytes(task_id)
        try:
            async for message in self._stub.WatchTask(pb.WatchTaskRequest(task_id=wanted), **self._call(timeout)):
                yield Event.of(message, Asked(task_id=wanted))
        except grpc.RpcError as error:
            raise _error(error) from None

    async def peers(
        self, capability: str = "", *, region: str = "", continent: str = "", compatible: bool = False,
        timeout: Optional[float] = None,
    ) -> List[Peer]:
        request = pb.ListPeersRequest(capability=capability, region=region, continent=continent, compatible_only=compatible)
        try:
            reply = await self._stub.ListPeers(request, **self._call(timeout))
        except grpc.RpcError as error:
            raise _error(error) from None
        return [Peer.of(peer) for peer in reply.peers]

    async def topology(self, *, timeout: Optional[float] = None) -> Topology:
        try:
            return Topology.of(await self._stub.GetTopology(pb.GetTopologyRequest(), **self._call(timeout)))
        except grpc.RpcError as error:
            raise _error(error) from None

    async def info(self, *, timeout: Optional[float] = None) -> NodeInfo:
        try:
            return NodeInfo.of(await self._stub.GetNodeInfo(pb.GetNodeInfoRequest(), **self._call(timeout)))
        except grpc.RpcError as error:
            raise _error(error) from None

    async def federation(self, *, timeout: Optional[float] = None) -> bytes:
        try:
            reply = await self._stub.GetEpochChain(pb.GetEpochChainRequest(), **self._call(timeout))
        except grpc.RpcError as error:
            raise _error(error) from None
        return reply.SerializeToString()
