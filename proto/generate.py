"""Generate the Python gRPC/protobuf modules from the .proto files under proto/.

``proto/overlay/v1/control.proto`` (package ``overlay.v1``) becomes ``overlay/v1/control_pb2.py``,
``control_pb2.pyi`` (types for mypy) and ``control_pb2_grpc.py``, importable as
``overlay.v1.control_pb2`` and so on. The generated files are build products, never committed.

Two callers share this one function, so the two ways of building agree:

- ``./run`` (``build_generated``) runs this file as a script before every command, generating in
  place with the virtualenv's grpcio-tools::

      python proto/generate.py --out . --stamp .venv/.overlay-proto-stamp

  With ``--stamp`` it does nothing unless the stamp (a hash of the .proto files and of the
  grpcio-tools version) differs or an output is missing, and then it costs one interpreter start.
- ``setup.py`` (a ``build_py`` subclass) imports it by path and generates into the build directory
  of a wheel, so ``pip install .`` ships the modules.

It imports nothing outside the standard library until it has to run protoc, and it must not import
the ``overlay`` package (it runs before that package is installed or importable).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
# What protoc writes for each foo.proto, next to where the .proto sits below PROTO_ROOT.
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    """The .proto files, relative to PROTO_ROOT, sorted."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def outputs(out: Path) -> list[Path]:
    """Every file that generating into ``out`` produces."""
    return [
        out / proto.parent / (proto.stem + suffix) for proto in proto_files() for suffix in SUFFIXES
    ]


def stamp_key() -> str:
    """A hash of everything the generated code depends on: the .proto files and protoc's version."""
    digest = hashlib.sha256()
    digest.update(importlib.metadata.version("grpcio-tools").encode())
    for proto in proto_files():
        digest.update(b"\0" + str(proto).encode() + b"\0")
        digest.update((PROTO_ROOT / proto).read_bytes())
    return digest.hexdigest()


def generate(out: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on every .proto file, writing below ``out``.

    Args:
        out: the directory that plays the role of the repository root (or of a wheel's root):
            ``proto/overlay/v1/x.proto`` produces ``out/overlay/v1/x_pb2.py`` and so on.

    Returns:
        The generated files.

    Raises:
        RuntimeError: protoc reported an error (its message is on stderr).
    """
    from grpc_tools import protoc  # only needed when generating: keep the stamp check cheap

    # `python -m grpc_tools.protoc` adds the well-known types (google/protobuf/*.proto) to the
    # include path; calling protoc.main does not, so add them here.
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    files = proto_files()
    out.mkdir(parents=True, exist_ok=True)
    for expected in outputs(out):
        expected.unlink(missing_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(PROTO_ROOT / f) for f in files),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(map(str, files))}")
    produced = outputs(out)
    missing = [p for p in produced if not p.is_file()]
    if missing:
        raise RuntimeError(f"protoc did not produce {', '.join(map(str, missing))}")
    return produced


def ensure_generated(out: Path, stamp: Path) -> bool:
    """Generate unless ``stamp`` holds the current key and every output exists.

    Returns:
        Whether it generated.
    """
    key = stamp_key()
    current = stamp.is_file() and stamp.read_text().strip() == key
    if current and all(p.is_file() for p in outputs(out)):
        return False
    stamp.unlink(missing_ok=True)
    generate(out)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT.parent, help="output root")
    parser.add_argument(
        "--stamp", type=Path, help="skip generation when this stamp is current (./run)"
    )
    args = parser.parse_args(argv)
    if args.stamp is None:
        generate(args.out)
        print(f"generated gRPC/protobuf code from {PROTO_ROOT}", file=sys.stderr)
    elif ensure_generated(args.out, args.stamp):
        print(f"generated gRPC/protobuf code from {PROTO_ROOT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
