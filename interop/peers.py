"""Independent QUIC peers on loopback: find them, start them, stop them.

Two peers run here (``scripts/peers/*.sh`` installs them): picoquic's
``picoquicdemo`` (server and client, ALPN hq-interop and h3, QUIC v1 and v2)
and Caddy, whose HTTP/3 server is quic-go (server only, h3). Each runs in a
work folder of its own, with certificates from :func:`make_certificates`, on a
loopback port picked here. A peer whose program is missing is reported by
:func:`find_peer` with ``installed`` false and a hint on how to install it; the
start functions then raise :class:`PeerNotInstalled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CADDY",
    "PICOQUIC",
    "Certificates",
    "ClientRun",
    "PeerInfo",
    "PeerNotInstalled",
    "PeerServer",
    "PeerStartError",
    "caddy_server",
    "find_peer",
    "free_port",
    "make_certificates",
    "picoquic_client",
    "picoquic_server",
]

PICOQUIC = "picoquic"
CADDY = "caddy"

PICOQUIC_VERSION = "0.6.1"
"""The aiopquic sdist whose vendored picoquic ``scripts/peers/picoquic.sh`` builds."""

_INSTALL_HINT = "run scripts/bootstrap --peers (or bash scripts/peers/{name}.sh)"


class PeerNotInstalled(RuntimeError):
    """The peer's program is not on this machine."""


class PeerStartError(RuntimeError):
    """The peer's program is there but did not come up (its log is in the message)."""


@dataclass(frozen=True)
class PeerInfo:
    """Where a peer's program is, if anywhere."""

    name: str
    """The peer's name in reports: ``picoquic`` or ``caddy``."""
    implementation: str
    """The QUIC implementation inside it."""
    program: str | None
    """Absolute path of the program, or ``None`` when not installed."""
    hint: str
    """How to install it."""

    @property
    def installed(self) -> bool:
        """Whether the program was found."""
        return self.program is not None

    def require(self) -> str:
        """The program's path; raises :class:`PeerNotInstalled` when missing."""
        if self.program is None:
            raise PeerNotInstalled(f"{self.name} is not installed: {self.hint}")
        return self.program


def _peers_dir() -> Path:
    return Path(os.environ.get("NETCONN_PEERS_DIR", "/opt/netconn-peers"))


def _executable(candidate: str | os.PathLike[str] | None) -> str | None:
    if candidate is None:
        return None
    path = Path(candidate)
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def find_peer(name: str) -> PeerInfo:
    """Locate ``name`` (``picoquic`` or ``caddy``); never raises for a missing program.

    ``NETCONN_PICOQUICDEMO`` and ``NETCONN_CADDY``, when set, name the only
    program to use (a missing one means not installed). Otherwise picoquic is
    looked for where ``scripts/peers/picoquic.sh`` builds it, then on PATH,
    and caddy on PATH. Raises ``ValueError`` for an unknown name.
    """
    hint = _INSTALL_HINT.format(name=name)
    if name == PICOQUIC:
        override = os.environ.get("NETCONN_PICOQUICDEMO")
        built = _peers_dir() / f"picoquic-aiopquic-{PICOQUIC_VERSION}" / "bin" / "picoquicdemo"
        if override is not None:
            program = _executable(override) if override else None
        else:
            program = _executable(built) or shutil.which("picoquicdemo")
        return PeerInfo(name, "picoquic 1.1.53 (C)", program, hint)
    if name == CADDY:
        override = os.environ.get("NETCONN_CADDY")
        if override is not None:
            program = _executable(override) if override else None
        else:
            program = shutil.which("caddy")
        return PeerInfo(name, "quic-go in Caddy (Go)", program, hint)
    raise ValueError(f"unknown peer {name!r}")


@dataclass(frozen=True)
class Certificates:
    """PEM files for a test CA and a server certificate for localhost, 127.0.0.1 and ::1."""

    ca: Path
    """The CA certificate clients trust."""
    cert: Path
    """The server's private key and certificate chain."""
    key: Path
    """The server's private key alone."""


def make_certificates(directory: Path) -> Certificates:
    """Write a fresh CA and a localhost server certificate into ``directory``."""
    import trustme  # a development dependency: only the runner and tests need it

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    certs = Certificates(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(certs.ca))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(certs.cert))
    leaf.private_key_pem.write_to_path(str(certs.key))
    return certs


def free_port(host: str = "127.0.0.1", *, tcp_too: bool = False) -> int:
    """A port free for UDP (and TCP with ``tcp_too``) on ``host`` right now.

    Another process may take it before it is used; the start functions fail
    clearly if so.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            if not tcp_too:
                return port
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError(f"no free port on {host}")


def _udp_port_bound(port: int) -> bool:
    """Whether some socket on this machine is bound to UDP ``port`` (from /proc/net)."""
    needle = f":{port:04X} "
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 1 and (fields[1] + " ").endswith(needle):
                    return True
    return False


@dataclass
class PeerServer:
    """A peer server process listening on loopback."""

    info: PeerInfo
    """Which peer."""
    host: str
    """The address clients should use."""
    port: int
    """The UDP port it listens on."""
    alpn: tuple[str, ...]
    """The application protocols it serves."""
    workdir: Path
    """Its folder: log, qlogs, state."""
    process: asyncio.subprocess.Process
    log_path: Path
    qlog_dir: Path | None = None
    """Where it writes qlog files, when it does."""

    def log(self) -> str:
        """Its output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def qlog_text(self) -> str:
        """Every qlog file it wrote, concatenated (empty when none)."""
        if self.qlog_dir is None or not self.qlog_dir.is_dir():
            return ""
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.qlog_dir.iterdir()) if p.is_file()
        )

    @property
    def running(self) -> bool:
        """Whether the process has not exited."""
        return self.process.returncode is None


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(5):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def _open_log(path: Path) -> BinaryIO:
    return open(path, "wb")


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


def _mkdirs(*paths: Path) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)


async def _spawn(
    argv: Sequence[str], workdir: Path, log_path: Path, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    with _open_log(log_path) as log:
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )


async def _wait_listening(server: PeerServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.running:
            raise PeerStartError(
                f"{server.info.name} exited with {server.process.returncode}:\n{server.log()}"
            )
        if _udp_port_bound(server.port):
            return
        await asyncio.sleep(0.05)
    raise PeerStartError(f"{server.info.name} not listening after {timeout} s:\n{server.log()}")


@contextlib.asynccontextmanager
async def picoquic_server(
    www: Path,
    certs: Certificates,
    workdir: Path,
    *,
    retry: bool = False,
    qlog: bool = True,
    host: str = "127.0.0.1",
    start_timeout: float = 10.0,
) -> AsyncIterator[PeerServer]:
    """Run ``picoquicdemo`` as a server of ``www`` (hq-interop and h3) while inside.

    picoquicdemo has no bind-address option and listens on every address of
    the port; it only answers clients that contact it, and ours use ``host``
    (loopback). ``retry`` makes it answer every Initial with a Retry.
    Raises :class:`PeerNotInstalled` or :class:`PeerStartError`.
    """
    info = find_peer(PICOQUIC)
    program = info.require()
    _mkdirs(workdir)
    port = free_port(host)
    argv = [program, "-p", str(port), "-c", str(certs.cert), "-k", str(certs.key)]
    argv += ["-w", str(www), "-N", str(workdir / "tokens.bin")]
    qlog_dir = workdir / "qlog" if qlog else None
    if qlog_dir is not None:
        _mkdirs(qlog_dir)
        argv += ["-q", str(qlog_dir)]
    if retry:
        argv.append("-r")
    log_path = workdir / "picoquic-server.log"
    process = await _spawn(argv, workdir, log_path)
    server = PeerServer(
        info, host, port, ("hq-interop", "h3"), workdir, process, log_path, qlog_dir
    )
    try:
        await _wait_listening(server, start_timeout)
        yield server
    finally:
        await _stop(process)


_CADDYFILE = """\
{{
\tadmin off
\tauto_https disable_redirects
\tskip_install_trust
\tstorage file_system {storage}
\tservers {{
\t\tprotocols h1 h2 h3
\t}}
}}
https://localhost:{port} {{
\tbind {host}
\ttls {cert} {key}
\troot * {www}
\tfile_server
}}
"""


@contextlib.asynccontextmanager
async def caddy_server(
    www: Path,
    certs: Certificates,
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    start_timeout: float = 10.0,
) -> AsyncIterator[PeerServer]:
    """Run Caddy (quic-go) as an HTTP/3 file server of ``www`` on ``host`` while inside.

    Caddy writes only inside ``workdir`` (HOME and the XDG folders point
    there). Raises :class:`PeerNotInstalled` or :class:`PeerStartError`.
    """
    info = find_peer(CADDY)
    program = info.require()
    port = free_port(host, tcp_too=True)
    _mkdirs(*(workdir / sub for sub in ("home", "data", "config", "storage")))
    caddyfile = workdir / "Caddyfile"
    _write_text(
        caddyfile,
        _CADDYFILE.format(
            storage=workdir / "storage",
            port=port,
            host=host,
            cert=certs.cert,
            key=certs.key,
            www=www,
        ),
    )
    env = dict(os.environ)
    env.update(
        HOME=str(workdir / "home"),
        XDG_DATA_HOME=str(workdir / "data"),
        XDG_CONFIG_HOME=str(workdir / "config"),
    )
    argv = [program, "run", "--config", str(caddyfile), "--adapter", "caddyfile"]
    log_path = workdir / "caddy.log"
    process = await _spawn(argv, workdir, log_path, env)
    server = PeerServer(info, host, port, ("h3",), workdir, process, log_path)
    try:
        await _wait_listening(server, start_timeout)
        yield server
    finally:
        await _stop(process)


@dataclass
class ClientRun:
    """What one run of a peer client did."""

    returncode: int | None
    """Its exit status; ``None`` if it was killed at the time limit."""
    output_dir: Path
    """Where it saved the files it downloaded."""
    log: str
    """Its output."""
    duration: float
    """Seconds it ran."""
    qlog_dir: Path | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether it exited with status 0 and reported no error of its own.

        picoquicdemo exits with status 0 even when it prints ``Client exit
        with code = -1`` (e.g. after an idle timeout), so its report counts too.
        """
        if self.returncode != 0:
            return False
        marker = "Client exit with code = "
        reported = [line for line in self.log.splitlines() if line.startswith(marker)]
        return all(line == marker + "0" for line in reported)

    def qlog_text(self) -> str:
        """Every qlog file it wrote, concatenated."""
        if self.qlog_dir is None or not self.qlog_dir.is_dir():
            return ""
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.qlog_dir.iterdir()) if p.is_file()
        )


async def picoquic_client(
    host: str,
    port: int,
    paths: Sequence[str],
    certs: Certificates,
    workdir: Path,
    *,
    alpn: str = "hq-interop",
    chacha20: bool = False,
    upgrade_v2: bool = False,
    key_update_after: int | None = None,
    idle_timeout: float = 5.0,
    timeout: float = 30.0,
    name: str = "run",
) -> ClientRun:
    """Run ``picoquicdemo`` as a client fetching ``paths`` from ``host``:``port``.

    Session tickets and tokens live in ``workdir`` (one file each per server
    port), so a second call with the same ``workdir`` resumes, and may send
    0-RTT. Files land in ``workdir/name/``. ``idle_timeout`` is the idle
    timeout picoquic announces, in seconds (its own default is 30). A client
    still running after ``timeout`` seconds is killed (``returncode``
    ``None``). Raises
    :class:`PeerNotInstalled`.
    """
    program = find_peer(PICOQUIC).require()
    out = workdir / name
    qlog_dir = workdir / f"{name}-qlog"
    _mkdirs(out, qlog_dir)
    argv = [program, "-a", alpn, "-n", "localhost", "-t", str(certs.ca)]
    argv += ["-T", str(workdir / f"tickets-{port}.bin"), "-N", str(workdir / f"tokens-{port}.bin")]
    argv += ["-o", str(out), "-q", str(qlog_dir), "-d", str(round(idle_timeout * 1000))]
    if chacha20:
        argv += ["-C", "20"]
    if upgrade_v2:
        argv += ["-U", "6b3343cf"]
    if key_update_after is not None:
        argv += ["-u", str(key_update_after)]
    argv += [host, str(port), ";".join(paths)]
    log_path = workdir / f"{name}.log"
    started = time.monotonic()
    process = await _spawn(argv, workdir, log_path)
    returncode: int | None
    try:
        async with asyncio.timeout(timeout):
            returncode = await process.wait()
    except TimeoutError:
        await _stop(process)
        returncode = None
    finally:
        if process.returncode is None:
            await _stop(process)
    return ClientRun(
        returncode,
        out,
        log_path.read_text(errors="replace"),
        time.monotonic() - started,
        qlog_dir,
        argv,
    )


def main() -> None:
    """Print which peers are installed (``python -m interop.peers``)."""
    for name in (PICOQUIC, CADDY):
        info = find_peer(name)
        where = info.program if info.program else f"not installed ({info.hint})"
        print(f"{name:10} {info.implementation:24} {where}")


if __name__ == "__main__":
    main()
    sys.exit(0)
