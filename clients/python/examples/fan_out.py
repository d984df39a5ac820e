#!/usr/bin/env python3
"""Fans a batch of tasks out to a Polity federation and collects verified answers.

    python3 clients/python/examples/fan_out.py --addr 127.0.0.1:7001 \\
        --capability arith --scope global --replication 3 \\
        --federation polity-testnet/node-0/federation.pb \\
        'What is 6 * 7?' '2 ** 10' '(1 + 2) / 4'

Each argument (or each line of stdin, without arguments) is one task's payload.
The tasks are submitted concurrently (at most --concurrency at a time) with the
asyncio client, possibly to several nodes (--addr repeated: round-robin), and each
answer is kept only if its certificate chain verifies offline (polity.verify; with
--federation, membership against that federation too), certifies the task that was
submitted, and decided the value the node reported. Prints one JSON line per task
and exits 1 if any task was not decided with a verified answer.
"""

import argparse
import asyncio
import json
import sys
from typing import List, Optional

from polity import AsyncClient, PolityError
from polity.verify import Unusable


async def one(
    client: AsyncClient, payload: str, args: argparse.Namespace, federation: Optional[bytes], gate: asyncio.Semaphore
) -> dict:
    async with gate:
        try:
            record = await client.submit(
                args.capability,
                payload,
                scope=args.scope,
                replication=args.replication,
                path=args.path,
                deadline_ms=args.deadline_ms,
            )
        except PolityError as error:
            return {"payload": payload, "ok": False, "error": str(error)}
    line = {"payload": payload, "task_id": record.task_id_hex, "state": record.state}
    if record.state not in ("DECIDED", "DEGRADED"):
        return {**line, "ok": False, "error": record.error}
    try:
        verdict = record.verify(federation)
    except Unusable as error:
        return {**line, "ok": False, "error": f"unusable certificate: {error}"}
    if not verdict.valid:
        return {**line, "ok": False, "error": f"certificate invalid: {verdict.reason}"}
    answer = verdict.value.decode("utf-8", errors="replace")
    return {**line, "ok": True, "answer": answer, "membership_checked": verdict.membership_checked}


async def fan_out(payloads: List[str], args: argparse.Namespace) -> List[dict]:
    federation = open(args.federation, "rb").read() if args.federation else None
    clients = [AsyncClient(addr, token_file=args.token_file) for addr in args.addr]
    gate = asyncio.Semaphore(args.concurrency)
    try:
        jobs = [one(clients[i % len(clients)], payload, args, federation, gate) for i, payload in enumerate(payloads)]
        return await asyncio.gather(*jobs)
    finally:
        for client in clients:
            await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("payloads", nargs="*", help="one task per payload (default: stdin lines)")
    parser.add_argument("--addr", action="append", help="a node's gRPC endpoint (repeatable)")
    parser.add_argument("--token-file")
    parser.add_argument("--capability", required=True)
    parser.add_argument("--scope", help="region[:NAME], continent[:NAME] or global")
    parser.add_argument("--replication", type=int, default=3)
    parser.add_argument("--path", choices=["bft", "raft", "stake"])
    parser.add_argument("--deadline-ms", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--federation", help="federation file to check membership against")
    args = parser.parse_args()
    args.addr = args.addr or ["127.0.0.1:7001"]
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    payloads = args.payloads or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    results = asyncio.run(fan_out(payloads, args))
    for result in results:
        print(json.dumps(result, ensure_ascii=False))
    return 0 if all(result["ok"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
