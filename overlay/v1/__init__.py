"""Python code generated from ``proto/overlay/v1/*.proto`` (protobuf package ``overlay.v1``).

The modules ``control_pb2``, ``linkstate_pb2`` and ``pair_pb2``, each with its ``_pb2_grpc`` twin
(and the ``.pyi`` type stubs of the ``_pb2`` ones) are generated at build time and never committed:
``./run`` generates them in place (``build_generated``, via ``proto/generate.py``) and
``pip install .`` generates them into the wheel (``setup.py``). Edit the ``.proto`` files, not
the generated code.

This file is committed so that ``overlay.v1`` is a package in a fresh checkout: package discovery
(``[tool.setuptools.packages.find]``) runs before any code is generated, and a wheel built from a
tree without it would silently leave the generated modules out.
"""
