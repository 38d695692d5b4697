"""setuptools hook: generate the gRPC/protobuf modules when building a wheel.

Everything else about the package is declared in pyproject.toml. ``build_py`` runs protoc (the
grpcio-tools listed in ``[build-system].requires``) through ``proto/generate.py``, the same
function ``./run`` uses, writing straight into the build directory so the wheel ships
``overlay/v1/*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` without touching the source tree.

Editable installs (``pip install -e``, which is what ``./run`` does) import from the source tree,
where ``./run``'s ``build_generated`` generates the modules with the virtualenv's own grpcio-tools.
Generating there from the isolated build environment instead could pick a newer grpcio-tools than
the virtualenv's grpcio, and generated ``_pb2_grpc`` modules refuse to import under an older
grpcio.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

_GENERATE_PY = Path(__file__).resolve().parent / "proto" / "generate.py"


def _generate(out: Path) -> None:
    # By path: proto/ is not a package, and the overlay package is not importable yet.
    spec = importlib.util.spec_from_file_location("_overlay_proto_generate", _GENERATE_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(out)


class BuildPyWithProtos(build_py):
    """build_py that also generates the gRPC/protobuf modules into the build directory."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            _generate(Path(self.build_lib))


setup(cmdclass={"build_py": BuildPyWithProtos})
