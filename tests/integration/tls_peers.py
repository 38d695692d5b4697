"""Certificates and Python TLS peers for the SIP over TLS tests.

Debian's SIPp is built without TLS, so the tests' TLS callers and trunks are Kamailio's TLS
module (``kamailio_tls``) or, where a test needs to misbehave on purpose (no certificate, a
stalled handshake, garbage after the handshake), Python's ssl over real loopback sockets.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import trio

from overlay.lab._process import stop_process
from overlay.lab.node_process import wait_answers_options
from overlay.lab.sipp import free_port
from overlay.tls import Issued, create_ca, issue_node

NOW = datetime.datetime.now(datetime.UTC)
KAMAILIO = shutil.which("kamailio") or (
    "/usr/sbin/kamailio" if os.access("/usr/sbin/kamailio", os.X_OK) else None
)
#: Debian's kamailio-tls-modules, under the architecture's library directory.
KAMAILIO_TLS_MODULE = next(iter(sorted(Path("/usr/lib").glob("*/kamailio/modules/tls.so"))), None)
KAMAILIO_CFG = Path(__file__).resolve().parent / "kamailio" / "tls-trunk.cfg"


@dataclass(frozen=True)
class Pki:
    """A CA and where its files are."""

    directory: Path
    ca: Issued

    @classmethod
    def create(cls, directory: Path, name: str = "sip-ca") -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        ca = create_ca(name, now=NOW)
        (directory / "ca.pem").write_bytes(ca.cert)
        return cls(directory, ca)

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def issue(self, name: str, addresses: list[str]) -> tuple[Path, Path]:
        """A certificate (server and client use) for ``addresses`` (IPs or DNS names):
        its file and its key's file."""
        issued = issue_node(self.ca, name, addresses, now=NOW)
        cert, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        issued.write(cert, key, overwrite=True)
        return cert, key


def client_context(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """What a trunk dialling the node uses: trusts ``pki``'s CA, presents ``cert`` if given."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


async def open_tls(
    host: str,
    port: int,
    context: ssl.SSLContext,
    server_name: str | None = None,
    *,
    local_address: str | None = None,
) -> trio.SSLStream[trio.SocketStream]:
    """A TLS connection to host:port (from ``local_address``), handshake done."""
    tcp = await trio.open_tcp_stream(host, port, local_address=local_address)
    stream = trio.SSLStream(tcp, context, server_hostname=server_name or host)
    await stream.do_handshake()
    return stream


@dataclass(frozen=True)
class KamailioTrunk:
    """A running Kamailio: its UDP and TLS addresses, and where it logs."""

    host: str
    udp_port: int
    tls_port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.asynccontextmanager
async def open_kamailio_tls(
    host: str,
    *,
    destination: str,
    pki: Pki,
    names: list[str],
    verify_client: bool = False,
) -> AsyncIterator[KamailioTrunk]:
    """Kamailio with TLS on ``host`` relaying every call to ``destination`` (a SIP URI); its
    certificate, from ``pki``, carries ``names``; it verifies the servers it dials against
    ``pki``'s CA and presents its certificate to them. Stopped by PID when the block ends.

    Raises:
        RuntimeError: it exited or did not answer OPTIONS within 20 s; the message has its log.
    """
    assert KAMAILIO is not None
    cert, key = pki.issue("kamailio-" + host.replace(".", "-"), names)
    udp_port, tls_port = free_port(host), free_port(host)
    with tempfile.TemporaryDirectory(prefix="kamailio-tls-") as tmp:
        profile = (
            f"method = TLSv1.2+\nprivate_key = {key}\ncertificate = {cert}\n"
            f"ca_list = {pki.ca_file}\n"
        )
        verify = "yes" if verify_client else "no"
        tls_cfg = Path(tmp) / "tls.cfg"
        tls_cfg.write_text(
            f"[server:default]\n{profile}verify_certificate = {verify}\n"
            f"require_certificate = {verify}\n\n"
            f"[client:default]\n{profile}verify_certificate = yes\nrequire_certificate = yes\n"
        )
        args = [
            KAMAILIO, "-f", str(KAMAILIO_CFG), "-DD", "-E", "-Y", tmp, "-w", tmp,
            "-A", f"LISTEN_UDP=udp:{host}:{udp_port}", "-A", f"LISTEN_TLS=tls:{host}:{tls_port}",
            "-A", f'DST_URI="{destination}"', "-A", f'TLS_CFG="{tls_cfg}"',
        ]  # fmt: skip
        log_path = Path(tmp) / "kamailio.log"
        with log_path.open("wb") as log_file:
            # Its own session: Kamailio forks workers, all of them in this process group.
            process = await trio.lowlevel.open_process(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        trunk = KamailioTrunk(host, udp_port, tls_port, log_path)
        try:
            try:
                await wait_answers_options(host, udp_port, within=20.0)
            except TimeoutError:
                raise RuntimeError(f"kamailio did not answer; log:\n{trunk.log()}") from None
            yield trunk
        finally:
            await stop_process(process)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
