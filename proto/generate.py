"""Generate the Python protobuf/gRPC modules from proto/ (``--check``: fail if stale).

The generated modules live in the client package (``sipauth_client.v1``),
their one home: the server imports them from there. grpc_tools writes an
absolute import (``from sipauth.v1 import auth_pb2``) into the stub module;
it is rewritten to a relative one so the package can be installed alone.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTOS = ["sipauth/v1/auth.proto"]
OUT = ROOT / "clients" / "python" / "sipauth_client" / "v1"
GENERATED = ["auth_pb2.py", "auth_pb2.pyi", "auth_pb2_grpc.py"]


def generate(into: Path) -> None:
    """Run protoc into ``into`` and fix the stub's import."""
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *PROTOS,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        produced = Path(tmp) / "sipauth" / "v1"
        into.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            text = (produced / name).read_text()
            text = text.replace("from sipauth.v1 import auth_pb2", "from . import auth_pb2")
            (into / name).write_text(text)


def main() -> int:
    """Generate, or with --check compare."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [name for name in GENERATED if not filecmp.cmp(Path(tmp) / name, OUT / name, shallow=False)]
    if stale:
        print(f"generated protobuf code is stale: {', '.join(stale)}; run `make proto`", file=sys.stderr)
        return 1
    print("generated protobuf code is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
