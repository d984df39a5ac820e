"""An independent verifier of Polity certificate chains, written from SIGNING.md.

Usage: polity-verify [--federation FILE.pb] [certificate.json]
       python3 -m polity.verify ...   (the same)
       python3 scripts/verify_chain.py ...   (the same, from a checkout, uninstalled)
       (the certificate from stdin when no path is given, or the path is `-`)

Reads the JSON form of a certificate (`polity_consensus::certificate_json`,
SIGNING.md "JSON form") and decides, from the root's `bytes` alone, whether the
chain verifies and answers its task (SIGNING.md "Verifying a certificate" and
"Binding a chain to its task"; Rust's `verify_task_chain`). Nothing in the JSON
other than `bytes` is trusted: the protobuf is decoded here by a small wire-format
reader, every digest is recomputed, every signature is checked with libsodium
(PyNaCl), and the other fields are only compared with what the bytes say.

With `--federation FILE.pb` (a federation file: the protobuf encoding of an
`EpochChain`, as `polity genesis export` writes it and `polity verify --federation`
reads it), the genesis and every epoch change in the file are checked first, and the
chain's members are then checked against the registry epoch its root names
(SIGNING.md "The registry"; Rust's `verify_in`). A federation file that does not
verify makes every chain invalid against it. Without `--federation`, membership is
not checked (a valid verdict then says nothing about who had the right to sign).

Prints `valid` and a one-line summary (and, with a federation, the epoch the
members were checked against) and exits 0, or prints `invalid: <reason>` and exits
1. Exits 2 when the input is unusable (not the JSON form, `bytes` that do not
decode as a Certificate, fields that disagree with `bytes`, a file that cannot be
read) or PyNaCl is missing. Needs Python 3.9+ and PyNaCl (python3 -m pip install
pynacl).

As a library (`polity.verify`): `verify_export(json_text_or_dict, federation=None)`
for the JSON form and `verify_certificate_bytes(certificate_bytes, federation=None)` for a
certificate's protobuf encoding (what `polity submit --certificate-out` writes, or
`Record.certificate_bytes` of the Python client) return a `Verdict`; both raise
`Unusable` for input they cannot judge. This module needs only the standard library
and PyNaCl (not grpcio or protobuf): it decodes the wire format itself, so it stays
independent of the code that produced the certificate.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import nacl.exceptions  # PyNaCl; scripts/verify_chain.py says so when it is missing
import nacl.signing


class Invalid(Exception):
    """The chain does not verify; the message says why."""


class Unusable(Exception):
    """The input is not a certificate export this verifier can judge."""


# --- Constants (SIGNING.md) -------------------------------------------------------

JSON_FORMAT = "polity/v1/certificate-json"
MEMBERS_MAX = 1024
LEVELS_MAX = 3
ROUNDS_MAX = 64
ATTEMPTS_MAX = 64
CERTIFICATE_BYTES_MAX = 64 << 20
STATEMENT_BODY_BYTES_MAX = 8 << 20
ANSWER_BYTES_MAX = 64 << 10
TASK_BYTES_MAX = 1 << 20
GROUP_BYTES_MAX = 256
PATH_REASON_BYTES_MAX = 1024
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1

TASK_TAG = b"polity/v1/task\0"
GROUP_TAG = b"polity/v1/group\0"
CERTIFICATE_TAG = b"polity/v1/certificate\0"

# StatementKind -> domain tag.
OBSERVATION, REPORT, ATTESTATION, NODE_INFO, RAFT_COMMIT = 1, 2, 3, 4, 5
DOMAIN_TAGS = {
    OBSERVATION: b"polity/v1/observation\0",
    REPORT: b"polity/v1/report\0",
    ATTESTATION: b"polity/v1/attestation\0",
    NODE_INFO: b"polity/v1/node-info\0",
    RAFT_COMMIT: b"polity/v1/raft-commit\0",
}

# Level, ConsensusPath and Aggregation values.
REGION, CONTINENT, GLOBAL = 1, 2, 3
LEVEL_WORDS = {0: "unspecified", REGION: "region", CONTINENT: "continent", GLOBAL: "global"}
BFT, RAFT, STAKE = 1, 2, 3
PATH_WORDS = {BFT: "bft", RAFT: "raft", STAKE: "stake"}
MAJORITY, TALLY, MEDIAN, FIRST_VALID = 1, 2, 3, 4
AGGREGATIONS = range(0, 5)
GLOBAL_GROUP = "global"


# --- Protobuf wire format ------------------------------------------------------------
#
# A schema maps a field number to (name, type, repeated); a type is one of the
# scalar names below or a nested schema. Decoding follows protobuf (and prost, which
# Polity uses): fields in any order, unknown fields skipped, the last value of a
# scalar wins, a message field that appears twice is merged, a string must be UTF-8,
# and a known field with another wire type is an error.

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
Schema = Dict[int, Tuple[str, Any, bool]]

SLOT: Schema = {
    1: ("task_id", "bytes", False),
    2: ("level", "enum", False),
    3: ("group", "string", False),
    4: ("round", "uint32", False),
}
MEMBER: Schema = {1: ("public_key", "bytes", False), 2: ("weight", "uint64", False)}
OBSERVATION_SCHEMA: Schema = {
    1: ("slot", SLOT, False),
    2: ("answer", "bytes", False),
    3: ("error", "string", False),
    4: ("child_certificate_digest", "bytes", False),
    5: ("group_digest", "bytes", False),
}
TALLY_ENTRY: Schema = {
    1: ("answer", "bytes", False),
    2: ("count", "uint32", False),
    3: ("weight", "uint64", False),
}
REPORT_SCHEMA: Schema = {
    1: ("slot", SLOT, False),
    2: ("aggregation", "enum", False),
    3: ("value", "bytes", False),
    4: ("tally", TALLY_ENTRY, True),
    5: ("observation_digests", "bytes", True),
    6: ("degraded", "bool", False),
    7: ("degraded_reason", "string", False),
    8: ("group_digest", "bytes", False),
}
ATTESTATION_SCHEMA: Schema = {
    1: ("slot", SLOT, False),
    2: ("report_digest", "bytes", False),
    3: ("raft_term", "uint64", False),
    4: ("raft_index", "uint64", False),
    5: ("raft_leader", "bytes", False),
}
RAFT_COMMIT_SCHEMA: Schema = {
    1: ("slot", SLOT, False),
    2: ("report_digest", "bytes", False),
    3: ("term", "uint64", False),
    4: ("commit_index", "uint64", False),
}
SIGNED_STATEMENT: Schema = {
    1: ("kind", "enum", False),
    2: ("body", "bytes", False),
    3: ("signer", "bytes", False),
    4: ("signature", "bytes", False),
}
CERTIFICATE: Schema = {
    1: ("task", "bytes", False),
    2: ("slot", SLOT, False),
    3: ("members", MEMBER, True),
    4: ("path", "enum", False),
    5: ("path_reason", "string", False),
    6: ("report", SIGNED_STATEMENT, False),
    7: ("observations", SIGNED_STATEMENT, True),
    8: ("attestations", SIGNED_STATEMENT, True),
    9: ("raft_commit", SIGNED_STATEMENT, False),
    10: ("child_digests", "bytes", True),
    11: ("children", "bytes", True),
    12: ("registry_digest", "bytes", False),
}
SCOPE: Schema = {1: ("level", "enum", False), 2: ("name", "string", False)}
RISK_POLICY: Schema = {
    1: ("adversarial_risk", "double", False),
    2: ("consistency", "double", False),
    3: ("path_override", "enum", False),
}
TASK_SPEC: Schema = {
    1: ("capability", "string", False),
    2: ("payload", "bytes", False),
    3: ("scope", SCOPE, False),
    4: ("replication", "uint32", False),
    5: ("aggregation", "enum", False),
    6: ("policy", RISK_POLICY, False),
    7: ("deadline_ms", "uint64", False),
    8: ("nonce", "uint64", False),
}

WIRE_TYPE_OF = {
    "bytes": LENGTH,
    "string": LENGTH,
    "enum": VARINT,
    "uint32": VARINT,
    "uint64": VARINT,
    "bool": VARINT,
    "double": FIXED64,
}
DEFAULTS = {"bytes": b"", "string": "", "enum": 0, "uint32": 0, "uint64": 0, "bool": False, "double": 0.0}


class Message(dict):
    """A decoded message: fields by name, also readable as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(name) from error


class DecodeError(Exception):
    pass


def read_varint(buf: bytes, pos: int) -> Tuple[int, int]:
    """A base-128 varint of at most 10 bytes whose value fits in 64 bits."""
    value = 0
    for index in range(10):
        if pos >= len(buf):
            raise DecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        if index == 9 and byte > 1:
            raise DecodeError("varint overflows 64 bits")
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            return value, pos
    raise DecodeError("varint longer than 10 bytes")


def read_key(buf: bytes, pos: int) -> Tuple[int, int, int]:
    key, pos = read_varint(buf, pos)
    if key > U32_MAX:
        raise DecodeError("invalid key")
    wire_type, number = key & 7, key >> 3
    if wire_type > FIXED32:
        raise DecodeError(f"invalid wire type {wire_type}")
    if number == 0:
        raise DecodeError("field number 0")
    return number, wire_type, pos


def read_value(buf: bytes, pos: int, wire_type: int, number: int) -> Tuple[Any, int]:
    """One field value: an int (varint, fixed), bytes (length-delimited), or None
    for a skipped group."""
    if wire_type == VARINT:
        return read_varint(buf, pos)
    if wire_type in (FIXED64, FIXED32):
        size = 8 if wire_type == FIXED64 else 4
        if pos + size > len(buf):
            raise DecodeError("truncated fixed-width field")
        return int.from_bytes(buf[pos : pos + size], "little"), pos + size
    if wire_type == LENGTH:
        length, pos = read_varint(buf, pos)
        if length > len(buf) - pos:
            raise DecodeError("length beyond the buffer")
        return buf[pos : pos + length], pos + length
    if wire_type == START_GROUP:
        while True:
            inner, inner_type, pos = read_key(buf, pos)
            if inner_type == END_GROUP:
                if inner != number:
                    raise DecodeError("unmatched end group")
                return None, pos
            _, pos = read_value(buf, pos, inner_type, inner)
    raise DecodeError("unexpected end group")


def fields(buf: bytes) -> Iterator[Tuple[int, int, Any]]:
    pos = 0
    while pos < len(buf):
        number, wire_type, pos = read_key(buf, pos)
        value, pos = read_value(buf, pos, wire_type, number)
        yield number, wire_type, value


def scalar(kind: str, raw: Any) -> Any:
    if kind == "bytes":
        return bytes(raw)
    if kind == "string":
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as error:
            raise DecodeError("string is not UTF-8") from error
    if kind == "enum":  # int32: the low 32 bits, two's complement
        low = raw & U32_MAX
        return low - (1 << 32) if low >= 1 << 31 else low
    if kind == "uint32":
        return raw & U32_MAX
    if kind == "bool":
        return raw != 0
    if kind == "double":
        return struct.unpack("<d", raw.to_bytes(8, "little"))[0]
    return raw  # uint64


def empty(schema: Schema) -> Message:
    message = Message()
    for name, kind, repeated in schema.values():
        message[name] = [] if repeated else (None if isinstance(kind, dict) else DEFAULTS[kind])
    return message


def decode_into(schema: Schema, buf: bytes, message: Message) -> Message:
    for number, wire_type, raw in fields(buf):
        if number not in schema:
            continue
        name, kind, repeated = schema[number]
        expected = LENGTH if isinstance(kind, dict) else WIRE_TYPE_OF[kind]
        if wire_type != expected:
            raise DecodeError(f"field {name}: wire type {wire_type}, expected {expected}")
        if isinstance(kind, dict):
            if repeated:
                message[name].append(decode_into(kind, raw, empty(kind)))
            else:
                target = message[name] if message[name] is not None else empty(kind)
                message[name] = decode_into(kind, raw, target)
        elif repeated:
            message[name].append(scalar(kind, raw))
        else:
            message[name] = scalar(kind, raw)
    return message


def decode(schema: Schema, buf: bytes, what: str) -> Message:
    try:
        return decode_into(schema, buf, empty(schema))
    except DecodeError as error:
        raise Invalid(f"{what} does not decode: {error}") from error


# --- ed25519 keys: the checks libsodium makes on a public key ------------------------

P = 2**255 - 19
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def edwards_add(a: Tuple[int, int], b: Tuple[int, int]) -> Tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + y1 * x2) * pow(1 + t, P - 2, P) % P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P
    return x3, y3


def key_problem(key: bytes) -> Optional[str]:
    """Why 32 bytes are not a usable public key (SIGNING.md, rule 1), or None:
    `y` (sign bit ignored) below p, a point of the curve, not of small order."""
    if len(key) != 32:
        return f"key of {len(key)} bytes"
    y = int.from_bytes(key, "little") & ((1 << 255) - 1)
    if y >= P:
        return "non-canonical key"
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if x * x % P != x2:
        x = x * SQRT_M1 % P
    if x * x % P != x2:
        return "key is not a curve point"
    if (x & 1) != key[31] >> 7:
        x = (P - x) % P
    point = (x, y)
    for _ in range(3):
        point = edwards_add(point, point)
    if point == (0, 1):
        return "weak (small-order) key"
    return None


def signature_ok(signer: bytes, message: bytes, signature: bytes) -> bool:
    """libsodium's crypto_sign_verify_detached (SIGNING.md, rules 1 to 4)."""
    try:
        nacl.signing.VerifyKey(signer).verify(message, signature)
        return True
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False


# --- Digests ---------------------------------------------------------------------------


def sha256(*parts: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.digest()


def task_id(task: bytes) -> bytes:
    return sha256(TASK_TAG, task)


def certificate_digest(certificate_bytes: bytes) -> bytes:
    return sha256(CERTIFICATE_TAG, certificate_bytes)


def report_digest(report_body: bytes) -> bytes:
    return sha256(DOMAIN_TAGS[REPORT], report_body)


def statement_digest(statement: Message) -> bytes:
    tag = DOMAIN_TAGS.get(statement.kind, b"")
    return sha256(tag, statement.body, statement.signature)


def normalize(aggregation: int) -> int:
    return MAJORITY if aggregation == 0 else aggregation


def group_digest(path: int, aggregation: int, registry: bytes, members: List[Message]) -> bytes:
    """The digest every observation and report carries (SIGNING.md "Digests"),
    binding the group's path, aggregation, registry epoch, members and weights."""
    parts = [
        GROUP_TAG,
        path.to_bytes(4, "big"),
        normalize(aggregation).to_bytes(4, "big"),
        registry,
        len(members).to_bytes(4, "big"),
    ]
    for member in members:
        parts += [member.public_key, member.weight.to_bytes(8, "big")]
    return sha256(*parts)


# --- Who may sit in a group (SIGNING.md "The registry") ---------------------------------

REGISTRY_TAG = b"polity/v1/registry\0"
GENESIS_TAG = b"polity/v1/genesis\0"
REQUEST_TAG = b"polity/v1/registry-request\0"
SEAT_TAG = b"polity/v1/seat\0"
REGISTRY_CAPABILITY = "polity.registry"
REGISTRY_MEMBERS_MAX = 4096
AUTHORITIES_MAX = 16
MEMBER_CAPABILITIES_MAX = 64
STAKE_MAX = 1 << 40
REGISTRY_BYTES_MAX = 4 << 20
EPOCH_CHANGES_MAX = 100_000
FEDERATION_BYTES_MAX = 64 << 20  # what `polity verify --federation` reads
ADMISSION_OPEN, ADMISSION_VOTE = 1, 2
LABEL = re.compile(r"[a-z0-9._-]{1,64}")

REGISTRY_MEMBER: Schema = {
    1: ("public_key", "bytes", False),
    2: ("region", "string", False),
    3: ("continent", "string", False),
    4: ("stake", "uint64", False),
    5: ("capabilities", "string", True),
}
REGISTRY: Schema = {
    1: ("federation", "string", False),
    2: ("epoch", "uint64", False),
    3: ("previous", "bytes", False),
    4: ("members", REGISTRY_MEMBER, True),
    5: ("admission", "enum", False),
    6: ("authorities", "bytes", True),
}
GENESIS: Schema = {1: ("registry", "bytes", False), 2: ("signatures", "bytes", True)}
PROPOSAL: Schema = {1: ("registry", "bytes", False), 2: ("subject_signature", "bytes", False)}
# `certificate` is a message field: every occurrence is kept as bytes, and their
# concatenation decoded (protobuf's merge of a message field that appears twice).
EPOCH_CHANGE: Schema = {1: ("proposal", "bytes", False), 2: ("certificate", "bytes", True)}
EPOCH_CHAIN: Schema = {1: ("genesis", GENESIS, False), 2: ("changes", EPOCH_CHANGE, True)}


def registry_digest(registry_bytes: bytes) -> bytes:
    return sha256(REGISTRY_TAG, registry_bytes)


def seat_rank(task: bytes, registry: bytes, key: bytes) -> bytes:
    return sha256(SEAT_TAG, task, registry, key)


def seats_allowed(replication: int) -> int:
    """The prefix of the seat order a group of `replication` may sit from."""
    return replication + 2 + replication // 2


def check_label(what: str, value: str) -> None:
    if LABEL.fullmatch(value) is None:
        raise Invalid(f"registry: {what} {value!r} is not a label (1..=64 bytes of a-z 0-9 . _ -)")


class Epoch:
    """One registry epoch: its exact bytes, digest, decoded registry, members by key,
    regions with their continents, and total stake. Built only from a valid registry."""

    def __init__(self, registry_bytes: bytes) -> None:
        limit("registry", len(registry_bytes), REGISTRY_BYTES_MAX)
        self.bytes = registry_bytes
        self.digest = registry_digest(registry_bytes)
        self.registry = decode(REGISTRY, registry_bytes, "registry")
        self.number = self.registry.epoch
        self.members: Dict[bytes, Message] = {}
        self.regions: Dict[str, str] = {}
        self.check()
        self.total_stake = sum(member.stake for member in self.registry.members)

    def check(self) -> None:
        """The registry's own rules (SIGNING.md "Registries and the genesis")."""
        registry = self.registry
        check_label("federation", registry.federation)
        if not 1 <= len(registry.members) <= REGISTRY_MEMBERS_MAX:
            raise Invalid(f"registry: {len(registry.members)} members, a registry has 1..={REGISTRY_MEMBERS_MAX}")
        if registry.admission not in (ADMISSION_OPEN, ADMISSION_VOTE):
            raise Invalid(f"registry: invalid admission {registry.admission}")
        if not 1 <= len(registry.authorities) <= AUTHORITIES_MAX:
            raise Invalid(f"registry: {len(registry.authorities)} authorities, a registry has 1..={AUTHORITIES_MAX}")
        for authority in registry.authorities:
            problem = key_problem(authority)
            if problem:
                raise Invalid(f"registry: authority: {problem}")
        if len(set(registry.authorities)) != len(registry.authorities):
            raise Invalid("registry: an authority repeats")
        if (registry.epoch == 0) != (registry.previous == b"") or len(registry.previous) not in (0, 32):
            raise Invalid("registry: previous is empty at epoch 0 and a 32-byte digest after")
        last = None
        for member in registry.members:
            problem = key_problem(member.public_key)
            if problem:
                raise Invalid(f"registry: member key: {problem}")
            check_label("region", member.region)
            check_label("continent", member.continent)
            if not 1 <= member.stake <= STAKE_MAX:
                raise Invalid(f"registry: stake {member.stake} outside 1..={STAKE_MAX}")
            if len(member.capabilities) > MEMBER_CAPABILITIES_MAX:
                raise Invalid(f"registry: more than {MEMBER_CAPABILITIES_MAX} capabilities")
            for capability in member.capabilities:
                check_label("capability", capability)
            if last is not None and last >= member.public_key:
                raise Invalid("registry: members not in strictly increasing key order")
            last = member.public_key
            self.members[member.public_key] = member
            continent = self.regions.setdefault(member.region, member.continent)
            if continent != member.continent:
                raise Invalid(f"registry: region {member.region!r} is in two continents")

    @staticmethod
    def serves(member: Message, capability: str) -> bool:
        return capability == REGISTRY_CAPABILITY or capability in member.capabilities

    def seat_order(self, task: bytes, capability: str, region: str) -> List[bytes]:
        """The region's members serving `capability`, lowest seat rank first."""
        ranked = sorted(
            (seat_rank(task, self.digest, member.public_key), member.public_key)
            for member in self.registry.members
            if member.region == region and Epoch.serves(member, capability)
        )
        return [key for _, key in ranked]


def distinct_children(certificate: Message) -> List[Message]:
    """The children a (verified) parent carries, each distinct bytes once, decoded."""
    seen, children = set(), []
    for child_bytes in certificate.children:
        if child_bytes not in seen:
            seen.add(child_bytes)
            children.append(decode(CERTIFICATE, child_bytes, "child"))
    return children


@dataclass
class Context:
    """What a verification is given besides the chain. `registry` is the registry
    epoch (an `Epoch`) the chain's root names, from the trust anchor; None when no
    federation was given (membership is then not checked)."""

    registry: Optional[Epoch] = None


def check_membership(certificate: Message, registry: Optional[Epoch]) -> None:
    """Whether one certificate's members may sit in its group, by the registry epoch
    (SIGNING.md "Membership of a chain", rules 1 to 4). Called once for every
    distinct certificate of the chain; the task is the certificate's own (the chain
    rules make it the root's)."""
    if registry is None:
        return
    epoch = registry
    if certificate.registry_digest != epoch.digest:
        raise Invalid(f"drawn from registry epoch {certificate.registry_digest.hex()}, which the anchor does not know")
    spec = decode(TASK_SPEC, certificate.task, "task")
    replication = max(1, spec.replication)
    group = certificate.slot.group
    place = place_of(group)
    for member in certificate.members:
        registered = epoch.members.get(member.public_key)
        if registered is None:
            raise Invalid(f"{group}: {member.public_key.hex()} is not a registry member")
        if member.weight != registered.stake:
            raise Invalid(
                f"{group}: {member.public_key.hex()} has weight {member.weight}, the registry gives it stake {registered.stake}"
            )
    keys = [member.public_key for member in certificate.members]
    level = certificate.slot.level
    if certificate.raft_commit is not None:
        # The raft commit is signed by the leader of the place's raft group, whose
        # voters are the place's registry members.
        signer = epoch.members.get(certificate.raft_commit.signer)
        in_place = signer is not None and (
            (level == REGION and signer.region == place)
            or (level == CONTINENT and signer.continent == place)
            or (level == GLOBAL and place == GLOBAL_GROUP)
        )
        if not in_place:
            raise Invalid(f"{group}: the raft commit is signed by {certificate.raft_commit.signer.hex()}, not a registry member of {place}")
    if level == REGION:
        order = epoch.seat_order(task_id(certificate.task), spec.capability, place)
        allowed = seats_allowed(replication)
        for key in keys:
            if epoch.members[key].region != place:
                raise Invalid(f"{group}: {key.hex()} sits in region {epoch.members[key].region!r}, not {place!r}")
            if key not in order:
                raise Invalid(f"{group}: {key.hex()} does not serve {spec.capability!r}")
            if order.index(key) >= allowed:
                raise Invalid(f"{group}: {key.hex()} is not among the first {allowed} seats the seat rule draws")
        needed = 1 if spec.capability == REGISTRY_CAPABILITY else min(replication, len(order))
        if len(keys) < needed:
            raise Invalid(f"{group}: {len(keys)} members, the task's replication needs {needed}")
        return
    if level == GLOBAL and place != GLOBAL_GROUP:
        raise Invalid(f"the global group is named {group!r}")
    members_of: Dict[bytes, set] = {}
    for digest, child_bytes in zip(certificate.child_digests, certificate.children):
        child = decode(CERTIFICATE, child_bytes, "child")
        child_place = place_of(child.slot.group)
        if level == CONTINENT:
            belongs = epoch.regions.get(child_place) == place
        else:
            belongs = child_place in epoch.regions.values()
        if not belongs:
            below = "region" if level == CONTINENT else "continent"
            raise Invalid(f"{group}: child {child.slot.group} is not a {below} of {group}")
        members_of[digest] = {member.public_key for member in child.members}
    for key in keys:
        if level == CONTINENT and epoch.members[key].continent != place:
            raise Invalid(f"{group}: {key.hex()} sits in continent {epoch.members[key].continent!r}, not {place!r}")
    # Rule 5: an included observation naming a child is signed by a member of it.
    for statement in certificate.observations:
        observation = decode(OBSERVATION_SCHEMA, statement.body, "observation")
        digest = observation.child_certificate_digest
        if digest and statement.signer not in members_of.get(digest, set()):
            raise Invalid(f"{group}: {statement.signer.hex()} observed a child group it did not sit in")


# --- The trust anchor: genesis and epoch changes ---------------------------------------


def verify_genesis(genesis: Message) -> Epoch:
    """A valid epoch-0 registry, signed by each authority, one signature each, in order."""
    epoch = Epoch(genesis.registry)
    if epoch.number != 0:
        raise Invalid(f"genesis: a genesis is epoch 0, this is epoch {epoch.number}")
    authorities = epoch.registry.authorities
    if len(genesis.signatures) != len(authorities):
        raise Invalid(f"genesis: {len(genesis.signatures)} signatures for {len(authorities)} authorities")
    for authority, signature in zip(authorities, genesis.signatures):
        if len(signature) != 64:
            raise Invalid("genesis: a signature is not 64 bytes")
        if not signature_ok(authority, GENESIS_TAG + genesis.registry, signature):
            raise Invalid(f"genesis: authority {authority.hex()} did not sign this registry")
    return epoch


def one_change(now: Message, then: Message) -> Tuple[str, Message]:
    """('join' | 'leave' | 'update', the subject): the one member that differs."""
    before = {member.public_key: member for member in now.members}
    after = {member.public_key: member for member in then.members}
    changes = []
    for key in sorted(set(before) | set(after)):
        if key not in before:
            changes.append(("join", after[key]))
        elif key not in after:
            changes.append(("leave", before[key]))
        elif before[key] != after[key]:
            changes.append(("update", after[key]))
    if len(changes) != 1:
        raise Invalid(f"proposal: changes {len(changes)} members; a proposal changes exactly one")
    return changes[0]


def check_proposal(current: Epoch, proposal_bytes: bytes) -> Epoch:
    """A well-formed next epoch of `current` (SIGNING.md "Epoch changes")."""
    limit("proposal", len(proposal_bytes), REGISTRY_BYTES_MAX)
    proposal = decode(PROPOSAL, proposal_bytes, "proposal")
    next_epoch = Epoch(proposal.registry)
    now, then = current.registry, next_epoch.registry
    if then.epoch != now.epoch + 1 or then.previous != current.digest:
        raise Invalid(f"proposal: proposes epoch {then.epoch} after {then.previous.hex()}, the current epoch is {now.epoch}")
    if (then.federation, then.admission, then.authorities) != (now.federation, now.admission, now.authorities):
        raise Invalid("proposal: a change may not touch the federation, admission or authorities")
    kind, subject = one_change(now, then)
    signature = proposal.subject_signature
    if not (kind == "leave" and signature == b""):
        if len(signature) != 64:
            raise Invalid("proposal: the subject's signature is not 64 bytes")
        if not signature_ok(subject.public_key, REQUEST_TAG + next_epoch.bytes, signature):
            raise Invalid(f"proposal: {subject.public_key.hex()} did not sign this proposal")
    return next_epoch


def registry_task(current: Epoch, proposal_bytes: bytes, deadline_ms: int) -> Message:
    """The TaskSpec, decoded, that asks `current`'s members to approve a proposal."""
    sizes: Dict[str, int] = {}
    for member in current.registry.members:
        sizes[member.region] = sizes.get(member.region, 0) + 1
    spec = empty(TASK_SPEC)
    spec.update(
        capability=REGISTRY_CAPABILITY,
        payload=proposal_bytes,
        scope=Message(level=GLOBAL, name=""),
        replication=max(sizes.values()),
        aggregation=MAJORITY,
        policy=Message(adversarial_risk=1.0, consistency=0.0, path_override=BFT),
        deadline_ms=deadline_ms,
        nonce=current.number + 1,
    )
    return spec


def approving_stake(epoch: Epoch, root: Message, approve: bytes) -> int:
    """Stake of the distinct members whose region-level observations answered
    `approve` without error (every distinct certificate of the chain looked at)."""
    approvers = set()
    stack = [(root, 0)]
    while stack:
        certificate, depth = stack.pop()
        level = certificate.slot.level if certificate.slot is not None else 0
        if level == REGION:
            for statement in certificate.observations:
                observation = decode(OBSERVATION_SCHEMA, statement.body, "observation")
                if statement.kind == OBSERVATION and not observation.error and observation.answer == approve:
                    approvers.add(statement.signer)
        elif depth + 1 < LEVELS_MAX:
            stack.extend((child, depth + 1) for child in distinct_children(certificate))
    return sum(epoch.members[key].stake for key in approvers if key in epoch.members)


def verify_change(current: Epoch, change: Message) -> Epoch:
    """The next epoch, if `change` proves it against `current`."""
    number = current.number + 1
    next_epoch = check_proposal(current, change.proposal)
    if not change.certificate:
        raise Invalid(f"epoch {number}: no certificate")
    certificate_bytes = b"".join(change.certificate)
    root = decode(CERTIFICATE, certificate_bytes, f"epoch {number}: certificate")
    try:
        summary = verify_task_chain(root, certificate_bytes, Context(registry=current))
    except Invalid as error:
        raise Invalid(f"epoch {number}: its certificate does not verify: {error}") from error
    spec = decode(TASK_SPEC, root.task, "task")
    if spec != registry_task(current, change.proposal, spec.deadline_ms):
        raise Invalid(f"epoch {number}: the certificate's task is not this proposal's registry task")
    approve = next_epoch.digest.hex().encode("ascii")
    if summary.value != approve:
        raise Invalid(f"epoch {number}: the federation did not approve this registry")
    approving = approving_stake(current, root, approve)
    if 3 * approving <= 2 * current.total_stake:
        raise Invalid(f"epoch {number}: approved by stake {approving} of {current.total_stake}; a change needs more than 2/3")
    return next_epoch


def load_federation(data: bytes) -> List[Epoch]:
    """Every epoch of a federation file (an `EpochChain`), genesis first, each checked."""
    limit("federation file", len(data), FEDERATION_BYTES_MAX)
    chain = decode(EPOCH_CHAIN, data, "federation file")
    if chain.genesis is None:
        raise Invalid("genesis missing")
    limit("epoch changes", len(chain.changes), EPOCH_CHANGES_MAX)
    epochs = [verify_genesis(chain.genesis)]
    for change in chain.changes:
        epochs.append(verify_change(epochs[-1], change))
    return epochs


# --- Aggregation (SIGNING.md "Aggregation") ------------------------------------------

# Unicode White_Space: what Rust's str::trim removes around a median answer.
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + (
    "\u2028\u2029\u202f\u205f\u3000"
)
NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


@dataclass
class Ballot:
    member_index: int
    weight: int
    answer: Optional[bytes]  # None for an error


def parse_number(answer: bytes) -> Optional[float]:
    """A finite decimal number, or None (median ignores the answer)."""
    try:
        text = answer.decode("utf-8").strip(WHITE_SPACE)
    except UnicodeDecodeError:
        return None
    if not NUMBER.fullmatch(text):
        return None  # inf, infinity and nan parse, but are not finite
    number = float(text)
    return number if math.isfinite(number) else None


def tally(ballots: List[Ballot]) -> List[Tuple[bytes, int, int]]:
    """(answer, count, weight) per distinct answer, sorted by answer bytes."""
    entries: Dict[bytes, List[int]] = {}
    for ballot in ballots:
        if ballot.answer is not None:
            entry = entries.setdefault(ballot.answer, [0, 0])
            entry[0] = min(entry[0] + 1, U32_MAX)
            entry[1] = min(entry[1] + ballot.weight, U64_MAX)
    return [(answer, count, weight) for answer, (count, weight) in sorted(entries.items())]


def median(ballots: List[Ballot]) -> Optional[bytes]:
    numbers = []
    for ballot in ballots:
        number = None if ballot.answer is None else parse_number(ballot.answer)
        if number is not None:
            # Total order: -0 sorts before +0; then answer bytes, then member order.
            numbers.append(((number, math.copysign(1.0, number)), ballot.answer, ballot.member_index))
    if not numbers:
        return None
    numbers.sort()
    return numbers[(len(numbers) - 1) // 2][1]


def aggregate(aggregation: int, ballots: List[Ballot]) -> Tuple[Optional[bytes], List[Tuple[bytes, int, int]]]:
    """The value (None when there is none) and the tally. First-valid without the
    task's verifier takes the first answer in member order."""
    ballots = sorted(ballots, key=lambda ballot: ballot.member_index)
    entries = tally(ballots)
    answered = sum(count for _, count, _ in entries)
    aggregation = normalize(aggregation)
    if aggregation == MAJORITY:
        value = next((answer for answer, count, _ in entries if 2 * count > answered), None)
    elif aggregation == TALLY:
        top = max((count for _, count, _ in entries), default=None)
        value = next((answer for answer, count, _ in entries if count == top), None)
    elif aggregation == MEDIAN:
        value = median(ballots)
    else:
        value = next((ballot.answer for ballot in ballots if ballot.answer is not None), None)
    return value, entries


# --- Quorum rules (SIGNING.md "Quorum rules") ------------------------------------------


def is_quorum(path: int, members: List[Message], indices: List[int]) -> bool:
    """Whether these distinct member indices decide on `path`."""
    n = len(members)
    if path == BFT:
        return len(indices) >= n - (n - 1) // 3
    if path == STAKE:
        total = sum(member.weight for member in members)
        return total > 0 and 3 * sum(members[i].weight for i in indices) > 2 * total
    return 2 * len(indices) > n  # raft


# --- One certificate (SIGNING.md "Verifying a certificate") -----------------------------


@dataclass
class Header:
    members: List[Message]
    index_of: Dict[bytes, int]
    slot: Message
    level: int
    path: int
    registry: bytes


@dataclass
class Summary:
    certificates: int
    signatures: int
    value: bytes
    level: int
    group: str
    path: int
    members: int


def limit(what: str, size: int, most: int) -> None:
    if size > most:
        raise Invalid(f"{what} too large: {size} > {most}")


def check_slot_fields(slot: Message) -> None:
    if slot.level not in (REGION, CONTINENT, GLOBAL):
        raise Invalid(f"invalid level {slot.level}")
    if not slot.group:
        raise Invalid("empty group")
    limit("group", len(slot.group.encode("utf-8")), GROUP_BYTES_MAX)
    if slot.round >= ROUNDS_MAX:
        raise Invalid(f"invalid round {slot.round}")


def check_header(certificate: Message, encoded_size: int, depth: int) -> Header:
    """Everything checkable before a signature: depth, sizes, members, slot, path."""
    if depth >= LEVELS_MAX:
        raise Invalid(f"chain deeper than {LEVELS_MAX} levels")
    limit("certificate", encoded_size, CERTIFICATE_BYTES_MAX)
    limit("task", len(certificate.task), TASK_BYTES_MAX)
    limit("path_reason", len(certificate.path_reason.encode("utf-8")), PATH_REASON_BYTES_MAX)
    members = certificate.members
    if not 1 <= len(members) <= MEMBERS_MAX:
        raise Invalid(f"group must have 1..={MEMBERS_MAX} members, has {len(members)}")
    index_of: Dict[bytes, int] = {}
    for index, member in enumerate(members):
        problem = key_problem(member.public_key)
        if problem:
            raise Invalid(f"member {index}: {problem}")
        if member.public_key in index_of:
            raise Invalid(f"member {index} listed twice")
        index_of[member.public_key] = index
    slot = certificate.slot
    if slot is None:
        raise Invalid("slot missing")
    if slot.task_id != task_id(certificate.task):
        raise Invalid("task id in slot is not the digest of the carried task")
    check_slot_fields(slot)
    if certificate.path not in (BFT, RAFT, STAKE):
        raise Invalid(f"invalid path {certificate.path}")
    limit("observations", len(certificate.observations), len(members))
    limit("attestations", len(certificate.attestations), len(members))
    if len(certificate.registry_digest) != 32:
        raise Invalid("registry_digest must be 32 bytes")
    return Header(members, index_of, slot, slot.level, certificate.path, certificate.registry_digest)


def signer_index(what: str, statement: Message, kind: int, header: Header, outsider_may_sign: bool = False) -> Optional[int]:
    """Shape, kind and membership of one statement, then its signature. The raft
    commit (`outsider_may_sign`) is the place's raft leader's: its signer need not be
    a member (None then); the registry decides whether it may sign."""
    if statement.kind != kind:
        raise Invalid(f"{what}: expected kind {kind}, got {statement.kind}")
    limit(f"{what} body", len(statement.body), STATEMENT_BODY_BYTES_MAX)
    if len(statement.signer) != 32 or len(statement.signature) != 64:
        raise Invalid(f"{what}: signer must be 32 bytes and signature 64")
    index = header.index_of.get(statement.signer)
    if index is None:
        problem = key_problem(statement.signer)
        if problem:
            raise Invalid(f"{what}: {problem}")
        if not outsider_may_sign:
            raise Invalid(f"{what} signed by a non-member {statement.signer.hex()}")
    if not signature_ok(statement.signer, DOMAIN_TAGS[kind] + statement.body, statement.signature):
        raise Invalid(f"{what}: bad signature")
    return index


@dataclass
class Signers:
    report: int
    observations: List[int]
    attestations: List[int]
    count: int


def verify_signatures(certificate: Message, header: Header) -> Signers:
    """Every statement: the expected kind, a member's, a good signature."""
    if certificate.report is None:
        raise Invalid("report missing")
    report = signer_index("report", certificate.report, REPORT, header)
    observations = [signer_index("observation", s, OBSERVATION, header) for s in certificate.observations]
    attestations = [signer_index("attestation", s, ATTESTATION, header) for s in certificate.attestations]
    count = 1 + len(observations) + len(attestations)
    if certificate.raft_commit is not None:
        signer_index("raft_commit", certificate.raft_commit, RAFT_COMMIT, header, outsider_may_sign=True)
        count += 1
    return Signers(report, observations, attestations, count)


def check_report(certificate: Message, header: Header, signer: int) -> Tuple[Message, bytes]:
    """The report: this slot, not degraded, the round's collector's, this group's."""
    report = decode(REPORT_SCHEMA, certificate.report.body, "report")
    if report.slot != header.slot:
        raise Invalid("report is for another slot")
    if report.degraded:
        raise Invalid(f"report is degraded: {report.degraded_reason}")
    collector = header.slot.round % len(header.members)
    if signer != collector:
        raise Invalid(f"report signed by member {signer}, but the round's collector is {collector}")
    if report.aggregation not in AGGREGATIONS:
        raise Invalid(f"invalid aggregation {report.aggregation}")
    group = group_digest(header.path, report.aggregation, header.registry, header.members)
    if report.group_digest != group:
        raise Invalid("report was signed for another group (path, aggregation or members)")
    return report, group


def decode_observations(
    certificate: Message, signers: List[int], header: Header, group: bytes, report: Message
) -> List[Tuple[int, Message]]:
    """In strictly increasing member order, this slot and group, answer xor error,
    and exactly the statements the report lists by digest."""
    if any(a >= b for a, b in zip(signers, signers[1:])):
        raise Invalid("observations are not in member order")
    observations = []
    for statement, index in zip(certificate.observations, signers):
        observation = decode(OBSERVATION_SCHEMA, statement.body, "observation")
        if observation.slot != header.slot:
            raise Invalid("observation is for another slot")
        if observation.group_digest != group:
            raise Invalid("observation was signed for another group")
        limit("answer", len(observation.answer), ANSWER_BYTES_MAX)
        if observation.error and observation.answer:
            raise Invalid("observation has both an answer and an error")
        observations.append((index, observation))
    digests = [statement_digest(s) for s in certificate.observations]
    if digests != report.observation_digests:
        raise Invalid("report's observation digests do not match the observations")
    return observations


def check_outcome(report: Message, observations: List[Tuple[int, Message]], members: List[Message]) -> None:
    ballots = [
        Ballot(index, members[index].weight, None if o.error else o.answer) for index, o in observations
    ]
    value, entries = aggregate(report.aggregation, ballots)
    if entries != [(t.answer, t.count, t.weight) for t in report.tally]:
        raise Invalid("report's tally does not match the observations")
    if normalize(report.aggregation) == FIRST_VALID:
        ok = any(answer == report.value for answer, _, _ in entries)
    else:
        ok = value is not None and value == report.value
    if not ok:
        raise Invalid("report's value does not match the aggregation of the observations")


def check_quorum(
    certificate: Message,
    header: Header,
    digest: bytes,
    value: bytes,
    observations: List[Tuple[int, Message]],
    attesters: List[int],
) -> None:
    """Fast path or attested (bft, stake); a commit, a majority of observations and a
    majority of attestations of the commit (raft)."""
    path, members, slot = header.path, header.members, header.slot
    observed = [index for index, _ in observations]
    if path == RAFT:
        if certificate.raft_commit is None:
            raise Invalid("raft_commit missing")
        commit = decode(RAFT_COMMIT_SCHEMA, certificate.raft_commit.body, "raft_commit")
        if commit.slot != slot:
            raise Invalid("raft_commit is for another slot")
        if commit.report_digest != digest:
            raise Invalid("raft_commit names another report")
        if commit.term == 0 or commit.commit_index == 0:
            raise Invalid(f"invalid raft_commit term and index: term {commit.term}, index {commit.commit_index}")
        if not is_quorum(path, members, observed):
            raise Invalid(f"no quorum: {len(observed)} observations of {len(members)} members on raft")
        check_attestations(certificate, path, slot, digest, attesters, commit)
        if not is_quorum(path, members, attesters):
            raise Invalid(f"no quorum: {len(attesters)} attestations of the raft commit of {len(members)} members")
        return
    if certificate.raft_commit is not None:
        raise Invalid("raft_commit not allowed on bft or stake")
    if not certificate.attestations:
        agreeing = [index for index, o in observations if not o.error and o.answer == value]
        if not is_quorum(path, members, agreeing):
            raise Invalid(f"no quorum: {len(agreeing)} of {len(members)} identical observations")
        return
    check_attestations(certificate, path, slot, digest, attesters, None)
    if not is_quorum(path, members, observed) or not is_quorum(path, members, attesters):
        raise Invalid(f"no quorum: {len(observed)} observations and {len(attesters)} attestations")


def check_attestations(
    certificate: Message, path: int, slot: Message, digest: bytes, attesters: List[int], commit: Optional[Message]
) -> None:
    """Each attestation from a member not counted before, for this slot and report;
    its raft fields all set and naming the commit's term, index and signer on raft,
    all zero or empty on bft and stake."""
    seen = set()
    for statement, index in zip(certificate.attestations, attesters):
        if index in seen:
            raise Invalid(f"attestation signed twice by member {index}")
        seen.add(index)
        attestation = decode(ATTESTATION_SCHEMA, statement.body, "attestation")
        if attestation.slot != slot:
            raise Invalid("attestation is for another slot")
        if attestation.report_digest != digest:
            raise Invalid("attestation names another report")
        mark = (attestation.raft_term, attestation.raft_index, attestation.raft_leader)
        if commit is None:
            if mark != (0, 0, b""):
                raise Invalid("attestation raft fields set on bft or stake")
        elif mark != (commit.term, commit.commit_index, certificate.raft_commit.signer):
            raise Invalid("attestation names another raft term, index or leader than the raft commit")


def verify_children(
    certificate: Message, level: int, observations: List[Tuple[int, Message]], context: Context, depth: int
) -> Tuple[int, int]:
    """Levels 2 and 3: each naming observation's child, carried, hashing to its
    digest, verified, one level down, same task, the observation's answer; one
    certificate per group name (a repeat of the same bytes is checked once)."""
    if level == REGION:
        if certificate.child_digests or certificate.children:
            raise Invalid("children not allowed on a region certificate")
        if any(o.child_certificate_digest for _, o in observations):
            raise Invalid("child_certificate_digest not allowed on a region certificate")
        return 0, 0
    naming = [o for _, o in observations if not o.error or o.child_certificate_digest]
    if [o.child_certificate_digest for o in naming] != certificate.child_digests:
        raise Invalid("child_digests differ from the observations' child digests")
    if len(certificate.children) != len(certificate.child_digests):
        raise Invalid("children missing (levels 2 and 3 carry them)")
    groups: Dict[str, Tuple[bytes, bytes]] = {}  # group name -> (digest, value)
    totals = [0, 0]
    for index, (child_bytes, digest, observation) in enumerate(
        zip(certificate.children, certificate.child_digests, naming)
    ):
        if certificate_digest(child_bytes) != digest:
            raise Invalid(f"child {index}: does not hash to its digest")
        if observation.error:
            raise Invalid(f"child {index}: an error observation names a child")
        repeat = next((v for d, v in groups.values() if d == digest), None)
        if repeat is not None:
            if repeat != observation.answer:
                raise Invalid(f"child {index}: observation's answer is not the child's value")
            continue
        child = decode(CERTIFICATE, child_bytes, f"child {index}")
        try:
            summary = verify_certificate(child, len(child_bytes), context, depth + 1)
        except Invalid as error:
            raise Invalid(f"in child {index}: {error}") from error
        if summary.level != level - 1:
            raise Invalid(f"child {index}: not one level down")
        if child.task != certificate.task:
            raise Invalid(f"child {index}: for another task")
        if child.registry_digest != certificate.registry_digest:
            raise Invalid(f"child {index}: drawn from another registry epoch")
        if child.slot.group in groups:
            raise Invalid(f"child {index}: group {child.slot.group} has two different certificates")
        groups[child.slot.group] = (digest, summary.value)
        if summary.value != observation.answer:
            raise Invalid(f"child {index}: observation's answer is not the child's value")
        totals[0] += summary.certificates
        totals[1] += summary.signatures
    return totals[0], totals[1]


def verify_certificate(certificate: Message, encoded_size: int, context: Context, depth: int) -> Summary:
    """One certificate and, recursively, everything it carries (`verify_chain`)."""
    header = check_header(certificate, encoded_size, depth)
    signers = verify_signatures(certificate, header)
    report, group = check_report(certificate, header, signers.report)
    observations = decode_observations(certificate, signers.observations, header, group, report)
    check_outcome(report, observations, header.members)
    certificates, signatures = verify_children(certificate, header.level, observations, context, depth)
    digest = report_digest(certificate.report.body)
    check_quorum(certificate, header, digest, report.value, observations, signers.attestations)
    # Membership last, as Rust's `verify_in` checks it after the chain (its children
    # have been checked by their own calls): the verdict does not depend on the order.
    check_membership(certificate, context.registry)
    return Summary(
        certificates=1 + certificates,
        signatures=signers.count + signatures,
        value=report.value,
        level=header.level,
        group=header.slot.group,
        path=header.path,
        members=len(header.members),
    )


# --- The chain's task (SIGNING.md "Binding a chain to its task") ------------------------

ATTEMPT = re.compile(r"\+?[0-9]+")


def place_of(group: str) -> str:
    """A group name without its attempt suffix (`eu~1` -> `eu`)."""
    place, separator, attempt = group.partition("~")
    if not separator:
        return group
    # Rust's u32 parse: ASCII digits, one optional leading '+', at most u32::MAX.
    ok = ATTEMPT.fullmatch(attempt) is not None and int(attempt) <= U32_MAX
    if not ok or not 1 <= int(attempt) <= ATTEMPTS_MAX or attempt.startswith("0"):
        raise Invalid(f"invalid group attempt {group!r}")
    return place


def task_rule(spec: Message) -> Tuple[int, int]:
    """The path the task's policy selects and its normalized aggregation."""
    if spec.aggregation not in AGGREGATIONS:
        raise Invalid(f"invalid task aggregation {spec.aggregation}")
    policy = spec.policy
    if policy is None:
        return STAKE, normalize(spec.aggregation)
    if policy.path_override not in (0, BFT, RAFT, STAKE):
        raise Invalid(f"invalid task path_override {policy.path_override}")
    for what in ("adversarial_risk", "consistency"):
        if not 0.0 <= policy[what] <= 1.0:  # NaN fails too
            raise Invalid(f"invalid task {what}: {policy[what]}")
    if policy.path_override != 0:
        path = policy.path_override
    elif policy.adversarial_risk > 0.7:
        path = BFT
    elif policy.consistency > 0.8:
        path = RAFT
    else:
        path = STAKE
    return path, normalize(spec.aggregation)


def check_scope(spec: Message, root: Message) -> None:
    if spec.scope is None:
        raise Invalid("task scope missing")
    expected = spec.scope.level if spec.scope.level in LEVEL_WORDS else 0
    place = GLOBAL_GROUP if expected == GLOBAL else spec.scope.name
    found = place_of(root.slot.group)
    if root.slot.level != expected or found != place:
        raise Invalid(
            f"the root decides {LEVEL_WORDS[root.slot.level]} {found!r}, "
            f"but the task's scope is {LEVEL_WORDS[expected]} {place!r}"
        )


def check_policy(certificate: Message, path: int, aggregation: int) -> None:
    """Every certificate of the chain used the task's path and aggregation, and no
    place decides twice among one certificate's children."""
    level = LEVEL_WORDS[certificate.slot.level]
    if certificate.path != path:
        raise Invalid(f"a {level} certificate used path {certificate.path}, the task selects {path}")
    report = decode(REPORT_SCHEMA, certificate.report.body, "report")
    if normalize(report.aggregation) != aggregation:
        raise Invalid(f"a {level} certificate used aggregation {report.aggregation}, the task's is {aggregation}")
    places: Dict[str, bytes] = {}
    for child_bytes in certificate.children:
        child = decode(CERTIFICATE, child_bytes, "child")
        place = place_of(child.slot.group)
        if place in places:
            if places[place] != child_bytes:
                raise Invalid(f"children: two decisions for {place!r}")
            continue  # the same child again, for another representative
        places[place] = child_bytes
        check_policy(child, path, aggregation)


def verify_task_chain(root: Message, root_bytes: bytes, context: Context) -> Summary:
    summary = verify_certificate(root, len(root_bytes), context, 0)
    spec = decode(TASK_SPEC, root.task, "task")
    check_scope(spec, root)
    path, aggregation = task_rule(spec)
    check_policy(root, path, aggregation)
    return summary


# --- The JSON form ----------------------------------------------------------------------


def hex_field(json_object: Dict[str, Any], name: str) -> bytes:
    value = json_object.get(name)
    if not isinstance(value, str):
        raise Unusable(f"field {name!r} missing or not a string")
    try:
        return bytes.fromhex(value)
    except ValueError as error:
        raise Unusable(f"field {name!r} is not hex") from error


def check_statement_json(where: str, statement_json: Any, statement: Optional[Message]) -> None:
    if statement is None:
        if statement_json is not None:
            raise Unusable(f"{where}: a statement the bytes do not carry")
        return
    if not isinstance(statement_json, dict):
        raise Unusable(f"{where}: missing")
    for name in ("body", "signer", "signature"):
        if hex_field(statement_json, name) != statement[name]:
            raise Unusable(f"{where}.{name} disagrees with bytes")


def check_export(export: Any, certificate_bytes: bytes, where: str = "root") -> None:
    """The JSON's byte fields are views of `bytes`: they must say the same."""
    if not isinstance(export, dict):
        raise Unusable(f"{where}: not a JSON object")
    if hex_field(export, "bytes") != certificate_bytes:
        raise Unusable(f"{where}.bytes are not the carried bytes")
    if hex_field(export, "digest") != certificate_digest(certificate_bytes):
        raise Unusable(f"{where}.digest is not the digest of its bytes")
    if "error" in export:
        return  # a child the exporter could not unfold; the verifier decodes it
    try:
        certificate = decode_into(CERTIFICATE, certificate_bytes, empty(CERTIFICATE))
    except DecodeError as error:
        raise Unusable(f"{where}.bytes do not decode: {error}") from error
    check_statement_json(f"{where}.report", export.get("report"), certificate.report)
    for name in ("observations", "attestations"):
        listed = export.get(name)
        if not isinstance(listed, list) or len(listed) != len(certificate[name]):
            raise Unusable(f"{where}.{name} disagree with bytes")
        for index, statement in enumerate(certificate[name]):
            check_statement_json(f"{where}.{name}[{index}]", listed[index], statement)
    check_statement_json(f"{where}.raft_commit", export.get("raft_commit"), certificate.raft_commit)
    children = export.get("children")
    if not isinstance(children, list) or len(children) != len(certificate.children):
        raise Unusable(f"{where}.children disagree with bytes")
    for index, (child, child_bytes) in enumerate(zip(children, certificate.children)):
        check_export(child, child_bytes, f"{where}.children[{index}]")


def show(value: bytes) -> str:
    try:
        return json.dumps(value.decode("utf-8"), ensure_ascii=False)
    except UnicodeDecodeError:
        return "0x" + value.hex()


def root_epoch(epochs: List[Epoch], root: Message) -> Optional[Epoch]:
    """The epoch the root names, the latest first (as Rust's `Anchor::epoch_named`)."""
    return next((epoch for epoch in reversed(epochs) if epoch.digest == root.registry_digest), None)


@dataclass(frozen=True)
class Verdict:
    """What the verifier decided about one chain."""

    valid: bool
    #: Why the chain is invalid ("" when valid).
    reason: str = ""
    #: The root's level, group, path, value and counts (None when invalid).
    summary: Optional[Summary] = None
    #: SHA-256 certificate digest of the root's bytes.
    root_digest: bytes = b""
    #: The registry epoch the members were checked against (None: not checked).
    epoch: Optional[Epoch] = None

    def __bool__(self) -> bool:
        return self.valid

    @property
    def value(self) -> Optional[bytes]:
        """The decided value of a valid chain."""
        return self.summary.value if self.summary is not None else None

    @property
    def membership_checked(self) -> bool:
        return self.epoch is not None

    def describe(self) -> str:
        """The lines the command line prints for this verdict."""
        if not self.valid:
            return f"invalid: {self.reason}"
        summary = self.summary
        assert summary is not None
        line = (
            f"valid\n{LEVEL_WORDS[summary.level]} {summary.group!r} decided {show(summary.value)} "
            f"on {PATH_WORDS[summary.path]} ({summary.members} members; {summary.certificates} "
            f"certificates, {summary.signatures} signatures; root {self.root_digest.hex()})"
        )
        if self.epoch is not None:
            line += (
                f"\nmembers checked against federation {self.epoch.registry.federation!r}, "
                f"registry epoch {self.epoch.number} ({self.epoch.digest.hex()})"
            )
        return line


def decode_certificate(certificate_bytes: bytes) -> Message:
    """The root certificate, decoded; `Unusable` when the bytes are no Certificate."""
    try:
        return decode_into(CERTIFICATE, certificate_bytes, empty(CERTIFICATE))
    except DecodeError as error:
        raise Unusable(f"bytes do not decode as a Certificate: {error}") from error


def verify_certificate_bytes(certificate_bytes: bytes, federation: Optional[bytes] = None) -> Verdict:
    """Verifies a chain given as the root certificate's protobuf encoding, against the
    federation file's bytes when given (SIGNING.md "The registry"). Raises `Unusable`
    when the bytes do not decode as a Certificate."""
    if not isinstance(certificate_bytes, (bytes, bytearray)):
        raise Unusable("a certificate is bytes (its protobuf encoding)")
    root_bytes = bytes(certificate_bytes)
    root = decode_certificate(root_bytes)
    digest = certificate_digest(root_bytes)
    epoch = None
    try:
        if federation is None:
            summary = verify_task_chain(root, root_bytes, Context())
        else:
            try:
                epochs = load_federation(bytes(federation))
            except Invalid as error:
                raise Invalid(f"federation: {error}") from error
            epoch = root_epoch(epochs, root)
            # As `verify_in`: the chain and its task first, then the epoch it names.
            summary = verify_task_chain(root, root_bytes, Context(registry=epoch))
            if epoch is None:
                raise Invalid(
                    f"drawn from registry epoch {root.registry_digest.hex()}, which the federation does not know"
                )
    except Invalid as error:
        return Verdict(valid=False, reason=str(error), root_digest=digest)
    return Verdict(valid=True, summary=summary, root_digest=digest, epoch=epoch)


def verify_export(export: Any, federation: Optional[bytes] = None) -> Verdict:
    """Verifies a chain given in the JSON form (its text, or the parsed object), from
    its root's `bytes`, after checking that every other byte field agrees with them.
    Raises `Unusable` for anything that is not such a document."""
    if isinstance(export, (str, bytes, bytearray)):
        try:
            export = json.loads(export)
        except ValueError as error:
            raise Unusable(f"not JSON ({error})") from error
    if not isinstance(export, dict) or export.get("format") != JSON_FORMAT:
        raise Unusable(f"not a {JSON_FORMAT} document")
    root_bytes = hex_field(export, "bytes")
    check_export(export, root_bytes)
    return verify_certificate_bytes(root_bytes, federation)


def judge(text: str, federation: Optional[bytes] = None) -> Tuple[int, str]:
    """(exit code, the lines to print) for one JSON export, against the federation
    file's bytes when given (SIGNING.md "The registry")."""
    try:
        verdict = verify_export(text, federation)
    except Unusable as error:
        return 2, f"unusable input: {error}"
    return (0 if verdict.valid else 1), verdict.describe()


def parse_args(argv: List[str]) -> Optional[Tuple[Optional[str], Optional[str]]]:
    """(federation file, export file) from the command line; None when it is wrong."""
    federation, export, rest = None, None, argv[1:]
    while rest:
        word = rest.pop(0)
        if word == "--federation" and rest and federation is None:
            federation = rest.pop(0)
        elif word.startswith("--federation=") and federation is None:
            federation = word[len("--federation=") :]
        elif word.startswith("-") and word != "-":
            return None
        elif export is None:
            export = word
        else:
            return None
    return federation, export


def main(argv: Optional[List[str]] = None) -> int:
    if argv is None:
        argv = sys.argv
    args = parse_args(argv)
    if args is None:
        print(__doc__, file=sys.stderr)
        return 2
    federation_path, export_path = args
    try:
        if export_path is not None and export_path != "-":
            with open(export_path, encoding="utf-8") as file:
                text = file.read()
        else:
            text = sys.stdin.read()
        federation = None
        if federation_path is not None:
            with open(federation_path, "rb") as file:
                federation = file.read(FEDERATION_BYTES_MAX + 1)
    except (OSError, UnicodeDecodeError) as error:
        print(f"unusable input: {error}")
        return 2
    code, line = judge(text, federation)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
