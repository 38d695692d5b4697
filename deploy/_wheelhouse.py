"""The wheelhouse the AMI builder installs from: the appliance's wheel and every wheel it needs.

The builder has no internet (deploy._image), so it cannot build or fetch anything: every wheel
must already fit the image's ``python3``, CPython 3.11 on x86_64 Linux with Debian 12's glibc.
``build_wheelhouse`` runs ``pip wheel`` on the project (which compiles the fastpath extension
and generates the gRPC code for this interpreter, so it must be 3.11 too) with binary wheels of
the dependencies from the package index, plus pip's own wheel, which the builder runs pip from.
``load_wheelhouse`` checks a wheelhouse, built here or handed in, before any AWS call.
"""

from __future__ import annotations

import hashlib
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy._walk import DeployError

#: The image's python3 (Debian 12's): what every wheel must fit.
IMAGE_PYTHON = (3, 11)
IMAGE_GLIBC = (2, 36)
IMAGE = "Debian 12 (CPython 3.11, x86_64, glibc 2.36)"

#: A wheel's file name (PEP 427): name, version, optional build tag, then its tags.
_WHEEL = re.compile(
    r"(?P<name>[^-]+)-(?P<version>[^-]+)(?:-\d[^-]*)?"
    r"-(?P<python>[^-]+)-(?P<abi>[^-]+)-(?P<platform>[^-]+)\.whl"
)
_MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_x86_64")
#: The legacy manylinux tags and the glibc each stands for (PEP 600).
_LEGACY_MANYLINUX = {
    "manylinux1_x86_64": (2, 5),
    "manylinux2010_x86_64": (2, 12),
    "manylinux2014_x86_64": (2, 17),
}
#: EC2's characters for image names, which carry the version.
_IMAGE_NAME_CHARS = re.compile(r"[A-Za-z0-9()\[\] ./'@_-]+")


@dataclass(frozen=True)
class Wheelhouse:
    """A checked wheelhouse: the appliance's ``version`` (its wheel's, from pyproject.toml's
    ``[project] version``) and pip's wheel, which the builder runs pip from."""

    path: Path
    version: str
    pip_wheel: str
    wheels: tuple[Path, ...]

    def sha256(self) -> dict[str, str]:
        """Each wheel's digest by file name, for the builder to check what it downloaded."""
        return {wheel.name: hashlib.sha256(wheel.read_bytes()).hexdigest() for wheel in self.wheels}


def project_dir() -> Path | None:
    """The checkout the deploy tool runs from (``None`` when installed without it)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def build_wheelhouse(project: Path, target: Path) -> Wheelhouse:
    """``pip wheel`` the project and its dependencies into ``target``, then check them.

    Raises:
        DeployError: this interpreter is not the image's Python (the extension it compiles
            would not load there), pip failed (the tail of its output), or the result does not
            fit the image (``load_wheelhouse``).
    """
    here = sys.version_info[:2]
    if here != IMAGE_PYTHON:
        raise DeployError(
            f"this Python is {_dotted(here)} ({sys.executable}), the image's is"
            f" {_dotted(IMAGE_PYTHON)} ({IMAGE}): the appliance's extension is compiled for the"
            f" Python that builds the wheelhouse; run the deploy tool under Python"
            f" {_dotted(IMAGE_PYTHON)}, or pass --wheelhouse"
        )
    libc, libc_version = platform.libc_ver()
    if libc != "glibc" or _version(libc_version.split(".")) > IMAGE_GLIBC:
        raise DeployError(
            f"this machine's C library is {libc or 'unknown'} {libc_version}, the image's is glibc"
            f" {_dotted(IMAGE_GLIBC)}: the appliance's extension compiled here may not load"
            " there; build the wheelhouse on Debian 12, or pass --wheelhouse"
        )
    command = [sys.executable, "-m", "pip", "wheel", "--only-binary", ":all:"]
    command += ["--wheel-dir", str(target), str(project), "pip"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise DeployError(f"pip wheel of {project} failed (exit {done.returncode}):\n{tail}")
    return load_wheelhouse(target)


def load_wheelhouse(path: Path) -> Wheelhouse:
    """The wheelhouse at ``path``, once every wheel in it fits the image.

    Raises:
        DeployError: no such directory; not exactly one overlay wheel and one pip wheel; a
            wheel for another Python, ABI or platform (naming it, its tags and the image's).
    """
    if not path.is_dir():
        raise DeployError(f"wheelhouse {path}: no such directory")
    wheels = tuple(sorted(path.glob("*.whl")))
    by_name: dict[str, list[tuple[Path, str]]] = {}
    for wheel in wheels:
        match = _WHEEL.fullmatch(wheel.name)
        if match is None:
            raise DeployError(f"wheelhouse {path}: {wheel.name} is not a wheel's file name")
        tags = f"{match['python']}-{match['abi']}-{match['platform']}"
        if not _fits_image(match["python"], match["abi"], match["platform"]):
            raise DeployError(
                f"wheelhouse {path}: {wheel.name} is for {tags}, the image is {IMAGE}: build"
                f" the wheelhouse under Python {_dotted(IMAGE_PYTHON)} on x86_64 Linux"
            )
        by_name.setdefault(match["name"].lower(), []).append((wheel, match["version"]))
    for needed in ("overlay", "pip"):
        if len(by_name.get(needed, [])) != 1:
            found = [wheel.name for wheel, _ in by_name.get(needed, [])]
            raise DeployError(f"wheelhouse {path}: needs one {needed} wheel, has {found or 'none'}")
    [(_, version)] = by_name["overlay"]
    if not _IMAGE_NAME_CHARS.fullmatch(version):
        raise DeployError(f"wheelhouse {path}: overlay {version} cannot go into an AMI's name")
    [(pip, _)] = by_name["pip"]
    return Wheelhouse(path, version, pip.name, wheels)


def _fits_image(pythons: str, abis: str, platforms: str) -> bool:
    """Whether one of a wheel's tag triples (each part may be a ``.``-joined set) installs on
    the image's python3, as pip there would decide."""
    return any(
        _fits_python(python, abi) and _fits_platform(system)
        for python in pythons.split(".")
        for abi in abis.split(".")
        for system in platforms.split(".")
    )


def _fits_python(python: str, abi: str) -> bool:
    major, minor = IMAGE_PYTHON
    exact = f"cp{major}{minor}"
    if abi == "none":
        return python in {f"py{major}", f"py{major}{minor}", exact}
    if abi == "abi3":  # the stable ABI: built for 3.x, loads on every later 3.y
        stable = re.fullmatch(rf"cp{major}(\d+)", python)
        return stable is not None and int(stable[1]) <= minor
    return python == exact and abi == exact


def _fits_platform(system: str) -> bool:
    if system in {"any", "linux_x86_64"}:  # linux_: built here, on a glibc checked by build
        return True
    manylinux = _MANYLINUX.fullmatch(system)
    glibc = _LEGACY_MANYLINUX.get(system) if manylinux is None else _version(manylinux.groups())
    return glibc is not None and glibc <= IMAGE_GLIBC


def _version(parts: Sequence[str | Any]) -> tuple[int, ...]:
    return tuple(int(part) for part in parts)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
