"""The suite's own network: namespaces joined by veth pairs, or addresses on the loopback interface.

With namespaces (root and ``ip`` from iproute2 needed) the machine's own network is not touched::

    clients ns            balancer ns                          backend ns (one each)
    198.18.0.2-5 ---veth--- 198.18.0.1  HAProxy :25
                            198.18.1.1  (bridge) ---veth--- 198.18.1.11-13 typed-smtpd :2525

The clients have no route to the backends, and the backends none to the clients: only HAProxy's
address, 198.18.1.1, reaches them. 198.18.0.0/15 is the range RFC 2544 sets aside for benchmark
networks, and lives in namespaces that are deleted afterwards.

Without namespaces the same roles get addresses of 127.0.0.0/8, which Linux routes to the
loopback interface as a whole, and free ports picked at run time.

Nothing here starts a server or speaks SMTP.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Literal

#: How the network is built: forced by ``TYPED_SMTPD_DEPLOYMENT_NETWORK`` (``namespaces`` or
#: ``loopback``), chosen by what the machine permits otherwise.
NETWORK_ENV: Final = "TYPED_SMTPD_DEPLOYMENT_NETWORK"
IP: Final = shutil.which("ip")
#: Seconds one ``ip`` command may take.
_IP_TIMEOUT: Final = 15.0
#: Client source addresses: several, so that a message's X-Peer names one of them in particular.
_CLIENT_HOSTS: Final = 4


class NetworkUnavailable(Exception):
    """Neither namespaces nor loopback addresses can be used here; the message says why."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A TCP address inside one namespace (``None``: the test's own network)."""

    namespace: str | None
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Topology:
    """Who listens where, and from which addresses the clients and HAProxy connect."""

    kind: Literal["namespaces", "loopback"]
    client_namespace: str | None
    client_hosts: tuple[str, ...]
    frontend: Endpoint
    #: HAProxy's address on the backends' side: the only one the backends trust.
    balancer_source: str
    #: Another address on the backends' side, from which a forged PROXY header is tried.
    untrusted_namespace: str | None
    untrusted_source: str
    backends: tuple[Endpoint, ...]
    #: Where the ``--workers`` server listens: reachable from the clients without HAProxy.
    workers: Endpoint

    def command(self, namespace: str | None, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``namespace`` (as is without one)."""
        if namespace is None:
            return list(argv)
        assert IP is not None
        return [IP, "netns", "exec", namespace, *argv]


def free_port(host: str) -> int:
    """A port nothing listens on at ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _ip(*args: str) -> None:
    assert IP is not None
    done = subprocess.run(
        [IP, *args], capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def _namespaces_permitted() -> str | None:
    """Why namespaces cannot be used here, or None if they can be tried."""
    if IP is None:
        return "the ip command is missing (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


def _loopback_permitted() -> str | None:
    """Why loopback addresses beyond 127.0.0.1 cannot be used here, or None."""
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.10", 0))
    except OSError as error:
        return f"cannot bind 127.0.0.10: {error}"
    return None


@contextmanager
def network() -> Iterator[Topology]:
    """The suite's network for the length of the block, removed afterwards.

    Namespaces when permitted (or asked for), loopback addresses otherwise; raises
    :class:`NetworkUnavailable` when neither works, or when the kind asked for does not.
    """
    wanted = os.environ.get(NETWORK_ENV, "")
    if wanted not in ("", "namespaces", "loopback"):
        raise NetworkUnavailable(f"{NETWORK_ENV} must be namespaces or loopback, not {wanted!r}")
    why_not = _namespaces_permitted() if wanted != "loopback" else "loopback asked for"
    if why_not is None:
        with _namespaces() as topology:
            yield topology
        return
    if wanted == "namespaces":
        raise NetworkUnavailable(why_not)
    why_not_loopback = _loopback_permitted()
    if why_not_loopback is not None:
        raise NetworkUnavailable(f"no namespaces ({why_not}) and {why_not_loopback}")
    yield _loopback()


def _loopback() -> Topology:
    frontend_host, workers_host = "127.0.0.9", "127.0.0.20"
    backends = tuple(
        Endpoint(None, host, free_port(host)) for host in ("127.0.0.11", "127.0.0.12", "127.0.0.13")
    )
    return Topology(
        kind="loopback",
        client_namespace=None,
        client_hosts=tuple(f"127.0.0.{2 + index}" for index in range(_CLIENT_HOSTS)),
        frontend=Endpoint(None, frontend_host, free_port(frontend_host)),
        balancer_source="127.0.0.10",
        untrusted_namespace=None,
        untrusted_source="127.0.0.2",
        backends=backends,
        workers=Endpoint(None, workers_host, free_port(workers_host)),
    )


@contextmanager
def _namespaces() -> Iterator[Topology]:
    prefix = f"tsd{os.getpid()}"
    created: list[str] = []
    try:
        topology = _build_namespaces(prefix, created)
    except OSError as error:
        _remove_namespaces(prefix, created)
        raise NetworkUnavailable(f"could not build the namespaces: {error}") from None
    try:
        yield topology
    finally:
        _remove_namespaces(prefix, created)


def _build_namespaces(prefix: str, created: list[str]) -> Topology:
    """Create the namespaces (their names go to ``created`` as they are made) and their links."""
    clients, balancer = f"{prefix}c", f"{prefix}l"
    servers = [f"{prefix}b{index}" for index in (1, 2, 3)]
    for name in (clients, balancer, *servers):
        _ip("netns", "add", name)
        created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
    # Clients <-> balancer: one veth pair, the client addresses on its clients' end.
    _ip("link", "add", f"{prefix}c0", "type", "veth", "peer", "name", f"{prefix}c1")
    _ip("link", "set", f"{prefix}c0", "netns", clients)
    _ip("link", "set", f"{prefix}c1", "netns", balancer)
    client_hosts = tuple(f"198.18.0.{2 + index}" for index in range(_CLIENT_HOSTS))
    for host in client_hosts:
        _ip("-n", clients, "addr", "add", f"{host}/24", "dev", f"{prefix}c0")
    _ip("-n", clients, "link", "set", f"{prefix}c0", "up")
    _ip("-n", balancer, "addr", "add", "198.18.0.1/24", "dev", f"{prefix}c1")
    _ip("-n", balancer, "link", "set", f"{prefix}c1", "up")
    # Balancer <-> backends: a bridge in the balancer's namespace, one veth pair per backend.
    bridge = f"{prefix}br"
    _ip("-n", balancer, "link", "add", bridge, "type", "bridge", "forward_delay", "0")
    _ip("-n", balancer, "addr", "add", "198.18.1.1/24", "dev", bridge)
    _ip("-n", balancer, "addr", "add", "198.18.1.250/24", "dev", bridge)
    _ip("-n", balancer, "link", "set", bridge, "up")
    backends = []
    for index, server in enumerate(servers, start=1):
        inner, outer = f"{prefix}b{index}0", f"{prefix}b{index}1"
        _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
        _ip("link", "set", inner, "netns", server)
        _ip("link", "set", outer, "netns", balancer)
        _ip("-n", balancer, "link", "set", outer, "master", bridge, "up")
        host = f"198.18.1.{10 + index}"
        _ip("-n", server, "addr", "add", f"{host}/24", "dev", inner)
        _ip("-n", server, "link", "set", inner, "up")
        backends.append(Endpoint(server, host, 2525))
    return Topology(
        kind="namespaces",
        client_namespace=clients,
        client_hosts=client_hosts,
        frontend=Endpoint(balancer, "198.18.0.1", 25),
        balancer_source="198.18.1.1",
        untrusted_namespace=balancer,
        untrusted_source="198.18.1.250",
        backends=tuple(backends),
        workers=Endpoint(balancer, "198.18.0.1", 2526),
    )


def _remove_namespaces(prefix: str, created: list[str]) -> None:
    """Delete the namespaces (and so their interfaces), and any pair left in our own."""
    for name in reversed(created):
        try:
            _ip("netns", "del", name)
        except OSError:
            pass
    for leftover in (f"{prefix}c0", *(f"{prefix}b{index}0" for index in (1, 2, 3))):
        if os.path.exists(f"/sys/class/net/{leftover}"):
            try:
                _ip("link", "del", leftover)
            except OSError:
                pass
