#!/usr/bin/env python3
"""Independent verdicts on ed25519 edge-case vectors, from libsodium (via PyNaCl).

Usage: python3 scripts/eddsa_verdicts.py consensus/tests/data/eddsa_vectors.json

Prints one line per vector, "<case> accept" or "<case> reject", as libsodium's
crypto_sign_open decides. Polity's signature rule must give the same verdicts
(consensus/tests/eddsa_vectors.rs compares them), so an outsider verifying with
libsodium never disagrees with a Polity node. Exits 2 when PyNaCl is not installed.
"""

import json
import sys

try:
    import nacl.exceptions
    import nacl.signing
except ImportError:
    print("PyNaCl is not installed (python3 -m pip install pynacl)", file=sys.stderr)
    sys.exit(2)


def verdict(vector):
    key = nacl.signing.VerifyKey(bytes.fromhex(vector["public_key"]))
    message = bytes.fromhex(vector["message"])
    signature = bytes.fromhex(vector["signature"])
    try:
        key.verify(message, signature)
        return "accept"
    except nacl.exceptions.BadSignatureError:
        return "reject"


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(64)
    with open(sys.argv[1], encoding="utf-8") as file:
        vectors = json.load(file)["vectors"]
    for vector in vectors:
        print(vector["case"], verdict(vector))


if __name__ == "__main__":
    main()
