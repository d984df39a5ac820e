"""Builds the package with its gRPC stubs generated from the repository's protos.

`build_py` runs grpcio-tools' protoc on proto/polity/v1/*.proto (two levels up, or
$POLITY_PROTO_DIR) and writes the stubs into the build tree as `polity.v1`, next to
the hand-written modules; the source tree holds no generated code. The runtime
dependencies ask for at least the grpcio and protobuf versions the stubs were
generated with (their generated code checks this when imported).
"""

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def proto_root() -> Path:
    root = Path(os.environ.get("POLITY_PROTO_DIR", HERE.parent.parent / "proto")).resolve()
    if not (root / "polity" / "v1" / "federation.proto").is_file():
        raise SystemExit(
            f"no polity/v1/*.proto under {root}: build from a Polity checkout "
            "(pip install ./clients/python) or set POLITY_PROTO_DIR"
        )
    return root


def generate(out: Path) -> None:
    from grpc_tools import protoc
    import grpc_tools

    root = proto_root()
    protos = sorted(str(path.relative_to(root)) for path in (root / "polity" / "v1").glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{root}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + protos) != 0:
        raise SystemExit(f"protoc failed on {protos}")
    # protoc writes polity/v1/*_pb2.py, importing one another as `polity.v1.…`.
    for package in (out / "polity", out / "polity" / "v1"):
        (package / "__init__.py").touch()
    (out / "polity" / "v1" / "__init__.py").write_text('"""Generated from proto/polity/v1 at build time."""\n')


class BuildWithStubs(build_py):
    def run(self) -> None:
        super().run()
        generate(Path(self.build_lib))


def dependencies() -> list:
    import grpc_tools
    from google.protobuf import __version__ as protobuf_version
    from importlib.metadata import version

    tools = version("grpcio-tools")
    del grpc_tools
    return [f"grpcio>={tools}", f"protobuf>={protobuf_version}", "pynacl>=1.5"]


setup(cmdclass={"build_py": BuildWithStubs}, install_requires=dependencies())
