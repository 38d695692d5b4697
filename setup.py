"""setuptools hooks: the Cython fastpath extension, and the gRPC/protobuf modules of a wheel.

Everything else about the package is declared in pyproject.toml.

The extension ``fastpath._relay`` is compiled from ``fastpath/_relay.pyx`` by Cython (listed in
``[build-system].requires`` and in the dev extras). Cython writes the generated C below
``build/cython/`` so the source tree holds only the sources; ``./run``'s ``build_generated``
compiles the extension in place (``python setup.py build_ext --inplace``) whenever the sources
change. ``build_py`` runs protoc (the
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

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

_ROOT = Path(__file__).resolve().parent
_GENERATE_PY = _ROOT / "proto" / "generate.py"
# Everything the compiled fastpath depends on; ./run hashes the same files (its build stamp).
_FASTPATH_DEPENDS = ["fastpath/_sys.pxd", "fastpath/_relay_helpers.h"]


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


def _extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        raise SystemExit(
            "building overlay needs Cython >= 3 for the fastpath extension: pip install cython"
        ) from exc
    relay = Extension(
        "fastpath._relay",
        sources=["fastpath/_relay.pyx"],
        include_dirs=["fastpath"],
        depends=_FASTPATH_DEPENDS,
        extra_compile_args=["-O2", "-Wno-unused-function"],
    )
    extensions: list[Extension] = cythonize(
        [relay], build_dir="build/cython", language_level=3, quiet=True
    )
    return extensions


setup(
    cmdclass={"build_py": BuildPyWithProtos},
    ext_modules=_extensions(),
    # Shipped with the package: the typed stub and the sources (an sdist rebuilds from them).
    package_data={"fastpath": ["py.typed", "*.pyi", "*.pyx", "*.pxd", "*.h"]},
)
