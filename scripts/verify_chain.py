#!/usr/bin/env python3
"""The independent verifier of Polity certificate chains, run from a checkout.

The verifier itself is `clients/python/src/polity/verify.py` (the Python client's
`polity.verify`, written from SIGNING.md); this runs that file from the source tree,
without installing the package, with the same command line, output and exit codes:

    python3 scripts/verify_chain.py [--federation FILE.pb] [certificate.json]

Prints `valid` and a summary and exits 0, `invalid: <reason>` and exits 1, or exits
2 for unusable input or when PyNaCl is missing (python3 -m pip install pynacl).
"""

import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "clients" / "python" / "src"


def main() -> int:
    # The checkout's copy first, even when another `polity` package is installed.
    sys.path.insert(0, str(SOURCE))
    try:
        import nacl.signing  # noqa: F401  (the one dependency)
    except ImportError:
        print("PyNaCl is not installed (python3 -m pip install pynacl)", file=sys.stderr)
        return 2
    from polity import verify

    if Path(verify.__file__).resolve().parent != SOURCE / "polity":
        print(f"imported {verify.__file__}, not the checkout's verifier", file=sys.stderr)
        return 2
    return verify.main(sys.argv)


if __name__ == "__main__":
    sys.exit(main())
