"""The operator's one way out: an HTTP GET with a wall-clock deadline, a byte cap, an address policy and a
redirect policy, for every address a tenant or a pod can choose (the hub resolver, the pods' ``/loadz``).

An LLMService names its hub endpoint and a pod's IP is wherever the cluster put it, so neither is trusted:

- the deadline covers the whole exchange (name lookup, connect, TLS, headers, body, redirects), not each socket
  operation: a watchdog shuts the socket down when it passes, so a server that trickles a byte a second gets
  :class:`EgressTimeout`, not a pass held for ever;
- the body is read up to ``max_bytes`` (a larger ``Content-Length`` is refused before reading): :class:`EgressTooLarge`;
- the address policy is checked on the address the name resolves to, and the connection goes to that checked
  address (a second lookup cannot swap it): link-local (169.254.0.0/16, fe80::/10, where cloud metadata
  services answer) and the known metadata addresses are refused always; loopback and private/cluster ranges only
  when the policy allows them; a refusal is :class:`EgressRefused`, raised before any connection is attempted;
- a redirect is followed only to the same origin or to a host the policy names (the hub's CDN), at most
  :data:`MAX_REDIRECTS` times, and the ``Authorization`` header never leaves its origin.

Every error is an :class:`EgressError` whose ``str()`` is a message fit for a condition.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

MAX_REDIRECTS = 5
CHUNK = 16 * 1024
USER_AGENT = "kubellm-operator"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Connect = Callable[[tuple[str, int], float], socket.socket]
Resolve = Callable[[str, int], list[str]]

# Refused whatever the policy says: where cloud metadata services and other node-local agents answer.
ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "169.254.0.0/16",  # link-local: AWS/GCP/Azure/OpenStack metadata at 169.254.169.254
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
        "::/128",
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "ff00::/8",  # multicast
    )
)
LOOPBACK = tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128"))
PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # carrier-grade NAT, a common pod and service range
        "fc00::/7",  # unique local
    )
)


class EgressError(Exception):
    """An outbound GET that did not bring back a body; ``str()`` says why, for a condition message."""


class EgressRefused(EgressError):
    """The policy refused the URL, its address or a redirect: no connection was attempted for it."""


class EgressTimeout(EgressError):
    """The exchange did not finish within its deadline."""


class EgressTooLarge(EgressError):
    """The answer is larger than the byte cap."""


class EgressFailed(EgressError):
    """The exchange failed: no connection, a transport error, or an HTTP error status."""


class EgressHTTPError(EgressFailed):
    """The server answered with an error status; ``status`` and ``headers`` say which (the body is not kept)."""

    def __init__(self, message: str, *, status: int, headers: Mapping[str, str]) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers)


# A bare base URL: scheme, host (a name, an IPv4 address or a bracketed IPv6 one) and an optional port, nothing after.
BASE_URL_PATTERN = r"^https?://([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?$"
_BASE_URL = re.compile(BASE_URL_PATTERN)


def base_url_problem(url: str) -> str | None:
    """Why ``url`` is not a bare base URL (``https://host[:port]``), or None: a path, query, fragment or user
    information would let whoever writes it aim the operator at another route of the host (issue 19)."""
    if _BASE_URL.match(url) is None:
        parts = urlsplit(url)
        extra = [
            what
            for what, present in (
                ("user information", "@" in parts.netloc),
                ("a path", parts.path not in ("", "/")),
                ("a query", bool(parts.query) or url.endswith("?")),
                ("a fragment", bool(parts.fragment) or url.endswith("#")),
            )
            if present
        ]
        found = f" (it has {', '.join(extra)})" if extra else ""
        return (
            f"must be a bare base URL, http(s)://host[:port], with no path, query, fragment or user information{found}"
        )
    return None


def endpoint_key(url: str) -> str:
    """An endpoint as compared against an allowed list: scheme and host lower-cased, no trailing slash."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def _connect(address: tuple[str, int], timeout: float) -> socket.socket:
    return socket.create_connection(address, timeout=timeout)


def _resolve(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


@dataclass(frozen=True)
class EgressPolicy:
    """Where a GET may go. ``connect`` and ``resolve`` are the hooks tests replace to see (and count) what would
    be dialled without dialling it."""

    allow_loopback: bool = False
    allow_private: bool = False
    redirect_hosts: frozenset[str] = frozenset()  # hosts (any port) a redirect may go to besides its own origin
    connect: Connect = field(default=_connect, compare=False)
    resolve: Resolve = field(default=_resolve, compare=False)

    def refusal(self, address: Address) -> str | None:
        """Why ``address`` is refused, or None when it may be dialled."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in net for net in ALWAYS_REFUSED):
            return f"{address} is a link-local, metadata or reserved address, which the operator never calls"
        if any(address in net for net in LOOPBACK) and not self.allow_loopback:
            return f"{address} is a loopback address, which this operator is not allowed to call"
        if any(address in net for net in PRIVATE) and not self.allow_private:
            return f"{address} is a private (cluster-internal) address, which this operator is not allowed to call"
        return None


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise EgressRefused(f"{url}: only http and https URLs are fetched")
    if not parts.hostname:
        raise EgressRefused(f"{url}: the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise EgressRefused(f"{url}: a URL with user information is not fetched")


class _Deadline:
    """The wall-clock end of one exchange, and the watchdog that shuts a socket down when it passes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = threading.Event()

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            self.expired.set()
            raise EgressTimeout(f"no complete answer within {self.seconds:g}s")
        return left

    def watch(self, sock: socket.socket) -> threading.Timer:
        def cut() -> None:
            self.expired.set()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(max(self.end - time.monotonic(), 0.0), cut)
        timer.daemon = True
        timer.start()
        return timer


def _lookup(host: str, port: int, policy: EgressPolicy, deadline: _Deadline) -> list[str]:
    """The host's addresses, within the deadline (getaddrinfo has no timeout of its own: it runs on a thread)."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    found: list[str] = []
    problem: list[BaseException] = []

    def run() -> None:
        try:
            found.extend(policy.resolve(host, port))
        except (OSError, UnicodeError) as error:
            problem.append(error)

    worker = threading.Thread(target=run, name="kubellm-egress-lookup", daemon=True)
    worker.start()
    worker.join(deadline.left())
    if worker.is_alive():
        raise EgressTimeout(f"cannot resolve {host} within {deadline.seconds:g}s")
    if problem or not found:
        raise EgressFailed(f"cannot resolve {host}: {problem[0] if problem else 'no address'}")
    return found


def _dial(url: str, policy: EgressPolicy, deadline: _Deadline) -> tuple[socket.socket, str]:
    """A connected socket to an allowed address of the URL's host (TLS for https), and that host."""
    scheme, host, port = _origin(url)
    addresses = _lookup(host, port, policy, deadline)
    allowed: list[str] = []
    refusals: list[str] = []
    for text in addresses:
        reason = policy.refusal(ipaddress.ip_address(text.split("%", 1)[0]))
        (refusals if reason else allowed).append(reason or text)
    if not allowed:
        raise EgressRefused(f"{scheme}://{host}:{port}: {refusals[0]}")
    last: OSError | None = None
    for address in dict.fromkeys(allowed):
        try:
            sock = policy.connect((address, port), deadline.left())
        except TimeoutError:
            raise EgressTimeout(f"cannot connect to {host}:{port} within {deadline.seconds:g}s") from None
        except OSError as error:
            last = error
            continue
        if scheme == "https":
            try:
                sock.settimeout(deadline.left())
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            except (OSError, ssl.SSLError) as error:
                sock.close()
                if deadline.expired.is_set() or isinstance(error, TimeoutError):
                    raise EgressTimeout(f"no TLS handshake with {host}:{port} within {deadline.seconds:g}s") from None
                raise EgressFailed(f"TLS with {host}:{port} failed: {error}") from None
        return sock, host
    raise EgressFailed(f"cannot connect to {host}:{port}: {last}")


class _Connection(http.client.HTTPConnection):
    """http.client on a socket dialled by :func:`_dial` (the address already checked)."""

    def __init__(self, sock: socket.socket, host: str, port: int) -> None:
        super().__init__(host, port)
        self.sock = sock

    def connect(self) -> None:  # the socket is given; never dial again
        raise http.client.NotConnected("the egress connection is dialled by kubellm_operator.egress")

    def close(self) -> None:
        # http.client closes the connection as soon as a response says it will close; the socket stays open for
        # the deadline's watchdog and the reads, and is closed by the one who dialled it (_exchange).
        self.sock = None


def _exchange(
    url: str, headers: Mapping[str, str], max_bytes: int, policy: EgressPolicy, deadline: _Deadline
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request: (status, headers, body) where the body is read only for a 2xx answer."""
    sock, host = _dial(url, policy, deadline)
    watchdog = deadline.watch(sock)
    parts = urlsplit(url)
    scheme, _, port = _origin(url)
    connection = _Connection(sock, host, port)
    response: http.client.HTTPResponse | None = None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        try:
            sock.settimeout(deadline.left())
            default_port = 443 if scheme == "https" else 80
            connection.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
            connection.putheader("Host", host if port == default_port else f"{host}:{port}")
            connection.putheader("Accept-Encoding", "identity")
            connection.putheader("User-Agent", USER_AGENT)
            connection.putheader("Connection", "close")
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            if not 200 <= response.status < 300:
                return response.status, response.msg, b""
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise EgressTooLarge(f"{url}: the answer is {length} bytes, more than the {max_bytes} allowed")
            body = bytearray()
            while True:
                sock.settimeout(deadline.left())
                chunk = response.read(min(CHUNK, max_bytes + 1 - len(body)) or 1)
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    raise EgressTooLarge(f"{url}: the answer is more than the {max_bytes} bytes allowed")
            return response.status, response.msg, bytes(body)
        except (OSError, http.client.HTTPException, ValueError) as error:
            if deadline.expired.is_set() or isinstance(error, TimeoutError) or time.monotonic() >= deadline.end:
                raise EgressTimeout(f"{url}: no complete answer within {deadline.seconds:g}s") from None
            raise EgressFailed(f"{url}: {type(error).__name__}: {error}") from None
    finally:
        watchdog.cancel()
        if response is not None:
            response.close()
        sock.close()


def fetch(
    url: str,
    *,
    deadline_s: float,
    max_bytes: int,
    policy: EgressPolicy,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """The body of ``GET url`` (a 2xx answer), within ``deadline_s`` seconds in all and ``max_bytes`` bytes.

    Raises :class:`EgressRefused` (nothing dialled for the refused step), :class:`EgressTimeout`,
    :class:`EgressTooLarge`, or :class:`EgressFailed` (:class:`EgressHTTPError` for an error status).
    """
    deadline = _Deadline(deadline_s)
    _check_url(url)
    origin = _origin(url)
    sent = dict(headers or {})
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        status, answer, body = _exchange(current, sent, max_bytes, policy, deadline)
        if 200 <= status < 300:
            return body
        location = answer.get("Location")
        if status in (301, 302, 303, 307, 308) and location:
            target = urljoin(current, location)
            _check_url(target)
            moved = _origin(target)
            if moved != origin:
                if moved[1] not in policy.redirect_hosts or (moved[0] != origin[0] and origin[0] == "https"):
                    raise EgressRefused(
                        f"{current} redirects to {moved[0]}://{moved[1]}:{moved[2]}, another origin the operator "
                        "does not follow"
                    )
                # Credentials are for the origin that asked for them, never for where it points.
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            current = target
            continue
        kept = {k: v[:256] for k, v in answer.items() if k.lower().startswith("x-error") or k.lower() == "retry-after"}
        raise EgressHTTPError(f"{current} answered HTTP {status}", status=status, headers=kept)
    raise EgressFailed(f"{url}: more than {MAX_REDIRECTS} redirects")
