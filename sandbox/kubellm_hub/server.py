"""``kubellm hub``: a model hub that serves model folders from disk over the Hugging Face Hub's HTTP API.

Only what ``huggingface_hub`` (and so transformers) uses to resolve and download a model is served, in the
Hub's shapes, so the real client works against it through ``HF_ENDPOINT``:

- ``GET /api/models/ORG/NAME[/revision/REV][?blobs=true]``: model info (commit ``sha``, ``siblings`` with sizes,
  blob ids and LFS sha256 when ``blobs``, ``safetensors`` parameters by dtype, ``gated``, ``private``);
- ``GET /api/models/ORG/NAME/tree/REV[/PATH][?recursive=true]``: the tree listing, paginated by ``Link``;
- ``HEAD|GET /ORG/NAME/resolve/REV/PATH``: a small file answers 200 with ``ETag`` (its git blob sha1),
  ``X-Repo-Commit`` and ``Content-Length``; an LFS file (weights) answers 302 to the "CDN" (a second port: another
  origin, like the Hub's CDN, so the client takes the metadata from the redirect itself: ``X-Linked-Etag`` (the
  sha256), ``X-Linked-Size``) and the CDN serves the bytes. Both honour ``Range`` (206, or 416);
- errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``) and
  ``X-Error-Message``, with the Hub's status codes (an anonymous request for a missing or private repo is 401).

Knobs (flags at start, or ``POST /_hub/knobs`` with JSON while it runs): ``bandwidth`` (bytes/s of file bodies),
``stall_after_bytes`` + ``stall_count`` (the next N file bodies longer than that stop after that many bytes and
hang until the client gives up), ``fail_count`` + ``fail_status`` (the next N file requests fail), ``corrupt_count`` (the next N
file bodies have one byte flipped), ``token`` (the one valid token), ``private`` and ``gated`` (repo ids that need
it). ``GET /_hub/stats`` counts requests by kind, for measuring a client's overhead.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from kubellm_hub.repos import Repo, RepoFile, RepoStore

log = logging.getLogger("kubellm_hub")

TREE_PAGE_SIZE = 1000  # the Hub's page size for tree listings without expand
_POINTER_SIZE = 134  # the size of a git LFS pointer file, which the Hub reports as lfs.pointerSize
_SEND_BLOCK = 64 * 1024


@dataclass
class Knobs:
    """Fault and auth settings; every field can be changed while the hub runs."""

    bandwidth: int = 0  # bytes per second of file bodies; 0: unlimited
    stall_after_bytes: int = 0
    stall_count: int = 0  # how many of the next file bodies stall; -1: all
    fail_count: int = 0  # how many of the next file requests fail with fail_status; -1: all
    fail_status: int = 503
    corrupt_count: int = 0  # how many of the next file bodies have one byte flipped
    token: str | None = None
    private: list[str] = field(default_factory=list)
    gated: list[str] = field(default_factory=list)

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown knob(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for name, value in changes.items():
            setattr(self, name, value)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class HubState:
    """What every request handler shares: the repos, the knobs, the counters and the stop signal."""

    def __init__(self, root: Path, knobs: Knobs | None = None) -> None:
        self.store = RepoStore(root)
        self.knobs = knobs or Knobs()
        self.lock = threading.Lock()
        self.stats: dict[str, int] = {}
        self.stopping = threading.Event()
        self.cdn_origin = ""

    def count(self, kind: str) -> None:
        with self.lock:
            self.stats[kind] = self.stats.get(kind, 0) + 1

    def take(self, knob: str) -> bool:
        """Consume one use of a countdown knob (``*_count``); True when this request is affected."""
        with self.lock:
            left = getattr(self.knobs, knob)
            if left == 0:
                return False
            if left > 0:
                setattr(self.knobs, knob, left - 1)
            return True


_API_MODEL = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?/?$")
_API_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(r"^/(?:models/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<sha>[0-9a-f]{64})$")


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kubellm-hub"
    hub: HubState  # set on the subclass each server gets

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/_hub/knobs":
            self._error(HubError(404, f"no route POST {url.path}"))
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            changes = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of knob: value")
            with self.hub.lock:
                self.hub.knobs.update(changes)
        except ValueError as error:
            self._error(HubError(400, str(error)))
            return
        self._json(200, asdict(self.hub.knobs))

    # -- routing

    def _dispatch(self, head: bool) -> None:
        url = urlsplit(self.path)
        path = url.path
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if path == "/_hub/stats":
                with self.hub.lock:
                    self._json(200, dict(self.hub.stats), head=head)
                return
            if path == "/_hub/knobs":
                with self.hub.lock:
                    self._json(200, asdict(self.hub.knobs), head=head)
                return
            if path == "/api/whoami-v2":
                self.hub.count("whoami")
                if self._token() is None or not self._token_valid():
                    raise HubError(401, "Invalid credentials in Authorization header")
                self._json(200, {"type": "user", "name": "kubellm-hub-user"}, head=head)
                return
            if match := _CDN.match(path):
                self.hub.count("cdn")
                self._cdn(match["repo"], match["sha"], head)
                return
            if match := _API_TREE.match(path):
                self.hub.count("tree")
                self._tree(unquote(match["repo"]), unquote(match["rev"]), unquote(match["path"] or ""), query, head)
                return
            if match := _API_MODEL.match(path):
                self.hub.count("model_info")
                self._model_info(unquote(match["repo"]), unquote(match["rev"] or "main"), query, head)
                return
            if match := _RESOLVE.match(path):
                self.hub.count("resolve_head" if head else "resolve_get")
                self._resolve(unquote(match["repo"]), unquote(match["rev"]), unquote(match["path"]), head)
                return
            raise HubError(404, f"no route {self.command} {path}")
        except HubError as error:
            self._error(error, head=head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- auth and lookup

    def _token(self) -> str | None:
        value = self.headers.get("Authorization") or ""
        return value[7:].strip() if value.lower().startswith("bearer ") else None

    def _token_valid(self) -> bool:
        with self.hub.lock:
            expected = self.hub.knobs.token
        return expected is None or self._token() == expected

    def _repo(self, repo_id: str, revision: str, *, files: bool) -> Repo:
        token = self._token()
        if token is not None and not self._token_valid():
            raise HubError(401, "Invalid credentials in Authorization header")
        with self.hub.lock:
            private = repo_id in self.hub.knobs.private
            gated = repo_id in self.hub.knobs.gated
        repo = self.hub.store.get(repo_id)
        # The Hub hides a private repo from whoever may not see it: it looks missing. Anonymous: 401, else 404.
        if repo is None or (private and token is None):
            raise HubError(401 if token is None else 404, "Repository not found", "RepoNotFound")
        if revision not in ("main", repo.commit):
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        # A gated repo's metadata is public; its files need a token that was granted access.
        if files and gated and token is None:
            raise HubError(
                401,
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                "to access it. Please log in.",
                "GatedRepo",
            )
        return repo

    # -- routes

    def _model_info(self, repo_id: str, revision: str, query: dict[str, str], head: bool) -> None:
        repo = self._repo(repo_id, revision, files=False)
        blobs = query.get("blobs", "").lower() in ("1", "true")
        with self.hub.lock:
            gated: str | bool = "manual" if repo_id in self.hub.knobs.gated else False
            private = repo_id in self.hub.knobs.private
        siblings: list[dict[str, Any]] = []
        for f in repo.files:
            sibling: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                sibling.update(blobId=f.git_sha1, size=f.size)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": _POINTER_SIZE}
            siblings.append(sibling)
        modified = max((repo.folder / f.path).stat().st_mtime for f in repo.files) if repo.files else 0.0
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(modified))
        info: dict[str, Any] = {
            "_id": repo.commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": repo.commit,
            "lastModified": stamp,
            "createdAt": stamp,
            "private": private,
            "gated": gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": "transformers" if repo.file("config.json") else None,
            "siblings": siblings,
            "usedStorage": sum(f.size for f in repo.files),
        }
        config = repo.folder / "config.json"
        if config.is_file():
            try:
                parsed = json.loads(config.read_text())
                info["config"] = {k: parsed[k] for k in ("architectures", "model_type") if k in parsed}
            except ValueError:
                pass
        if repo.parameters:
            info["safetensors"] = {"parameters": repo.parameters, "total": sum(repo.parameters.values())}
        self._json(200, info, head=head)

    def _tree(self, repo_id: str, revision: str, folder: str, query: dict[str, str], head: bool) -> None:
        repo = self._repo(repo_id, revision, files=False)
        folder = folder.strip("/")
        recursive = query.get("recursive", "").lower() in ("1", "true")
        prefix = f"{folder}/" if folder else ""
        if folder and not any(f.path.startswith(prefix) for f in repo.files) and repo.file(folder) is None:
            raise HubError(404, f'{folder} does not exist on "{revision}"', "EntryNotFound")
        entries: dict[str, dict[str, Any]] = {}
        for f in repo.files:
            if not f.path.startswith(prefix):
                continue
            rest = f.path[len(prefix) :]
            parts = rest.split("/")
            if not recursive and len(parts) > 1:
                directory = prefix + parts[0]
                entries.setdefault(directory, {"type": "directory", "oid": "0" * 40, "size": 0, "path": directory})
                continue
            if recursive:
                for depth in range(1, len(parts)):
                    directory = prefix + "/".join(parts[:depth])
                    entries.setdefault(directory, {"type": "directory", "oid": "0" * 40, "size": 0, "path": directory})
            entry: dict[str, Any] = {"type": "file", "oid": f.git_sha1, "size": f.size, "path": f.path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": _POINTER_SIZE}
            entries[f.path] = entry
        listing = [entries[k] for k in sorted(entries)]
        start = int(query.get("cursor", "0") or 0)
        page = listing[start : start + TREE_PAGE_SIZE]
        headers = {}
        if start + TREE_PAGE_SIZE < len(listing):
            url = urlsplit(self.path)
            params = {k: v for k, v in query.items() if k != "cursor"} | {"cursor": str(start + TREE_PAGE_SIZE)}
            encoded = "&".join(f"{k}={quote(v)}" for k, v in params.items())
            headers["Link"] = f'<http://{self.headers.get("Host")}{url.path}?{encoded}>; rel="next"'
        self._json(200, page, head=head, headers=headers)

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        repo = self._repo(repo_id, revision, files=True)
        entry = repo.file(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        common = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if entry.lfs:
            # Like the Hub: the weights live on a CDN (another origin); the metadata rides on the redirect.
            location = f"{self.hub.cdn_origin}/cdn/{repo_id}/{entry.sha256}?filename={quote(path)}"
            body = f"Found. Redirecting to {location}".encode()
            self.send_response(302)
            for name, value in common.items():
                self.send_header(name, value)
            self.send_header("Location", location)
            self.send_header("ETag", f'"{entry.git_sha1}"')
            self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
            self.send_header("X-Linked-Size", str(entry.size))
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        self._send_file(repo, entry, head, etag=entry.git_sha1, extra=common)

    def _cdn(self, repo_id: str, sha256: str, head: bool) -> None:
        repo = self.hub.store.get(repo_id)
        entry = next((f for f in repo.files if f.sha256 == sha256), None) if repo else None
        if repo is None or entry is None:
            raise HubError(404, "NoSuchKey: the object does not exist")
        self._send_file(repo, entry, head, etag=entry.sha256, extra={"Accept-Ranges": "bytes"})

    # -- file bodies, with the knobs

    def _send_file(self, repo: Repo, entry: RepoFile, head: bool, *, etag: str, extra: dict[str, str]) -> None:
        if not head and self.hub.take("fail_count"):
            with self.hub.lock:
                status = self.hub.knobs.fail_status
            raise HubError(status, f"injected failure ({status}) by the hub's fail_count knob")
        start, end = 0, entry.size - 1
        status = 200
        requested = self.headers.get("Range")
        if requested:
            parsed = _parse_range(requested, entry.size)
            if parsed is None:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{entry.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = parsed
            status = 206
        length = max(end - start + 1, 0)
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Last-Modified", formatdate((repo.folder / entry.path).stat().st_mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{entry.size}")
        self.end_headers()
        if head:
            return
        self.hub.count("file_body")
        with self.hub.lock:
            bandwidth = self.hub.knobs.bandwidth
            stall_after = self.hub.knobs.stall_after_bytes
        # Only a body longer than the stall point can stall; shorter ones leave the countdown alone.
        stall = length > stall_after and self.hub.take("stall_count")
        corrupt = self.hub.take("corrupt_count")
        block = _SEND_BLOCK if not bandwidth else max(1024, min(_SEND_BLOCK, bandwidth // 20))
        sent = 0
        began = time.monotonic()
        with (repo.folder / entry.path).open("rb") as handle:
            handle.seek(start)
            while sent < length and not self.hub.stopping.is_set():
                if stall and sent >= stall_after:
                    log.info("stalling %s/%s after %d bytes", repo.repo_id, entry.path, sent)
                    # Hang with the connection open, as a stuck proxy does, until the client or the hub gives up.
                    while not self.hub.stopping.wait(0.2):
                        pass
                    self.close_connection = True
                    return
                size = min(block, length - sent)
                if stall:
                    size = min(size, stall_after - sent)
                chunk = handle.read(size)
                if not chunk:
                    break
                if corrupt and sent == 0:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                self.wfile.write(chunk)
                sent += len(chunk)
                if bandwidth:
                    ahead = sent / bandwidth - (time.monotonic() - began)
                    if ahead > 0 and self.hub.stopping.wait(ahead):
                        break
        if sent < length:
            self.close_connection = True

    # -- answers

    def _json(self, status: int, payload: Any, *, head: bool = False, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, error: HubError, *, head: bool = False) -> None:
        headers = {"X-Error-Message": error.message}
        if error.code:
            headers["X-Error-Code"] = error.code
        if error.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="Authentication required", charset="UTF-8"'
        self._json(error.status, {"error": error.message}, head=head, headers=headers)


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range (RFC 9110 14.1.2) as inclusive (start, end); None when unsatisfiable."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value)
    if match is None or (not match[1] and not match[2]):
        return None
    if not match[1]:
        suffix = int(match[2])
        return (max(size - suffix, 0), size - 1) if suffix > 0 and size > 0 else None
    start = int(match[1])
    end = min(int(match[2]), size - 1) if match[2] else size - 1
    if start >= size or end < start:
        return None
    return start, end


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class HubServer:
    """The hub and its CDN, each on its own port, served from threads; ``with HubServer(...) as hub:``."""

    def __init__(self, root: Path, *, host: str = "127.0.0.1", port: int = 0, knobs: Knobs | None = None) -> None:
        self.state = HubState(root, knobs)
        handler = type("BoundHubHandler", (HubHandler,), {"hub": self.state})
        self._api = _Server((host, port), handler)
        self._cdn = _Server((host, 0), handler)
        self.host = host
        self.state.cdn_origin = f"http://{_url_host(host)}:{self._cdn.server_address[1]}"
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._api.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    def set_knobs(self, **changes: Any) -> None:
        with self.state.lock:
            self.state.knobs.update(changes)

    def stats(self) -> dict[str, int]:
        with self.state.lock:
            return dict(self.state.stats)

    def start(self) -> HubServer:
        for server in (self._api, self._cdn):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self.state.stopping.set()
        for server in (self._api, self._cdn):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubellm hub",
        description="Serve model folders ROOT/ORG/NAME as hub repos ORG/NAME (revision main) over the Hugging "
        "Face Hub API; point clients at it with HF_ENDPOINT.",
    )
    parser.add_argument("--root", type=Path, required=True, help="folder holding ORG/NAME model folders")
    parser.add_argument("--port", type=int, default=8090, help="listen port (default 8090; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument(
        "--bandwidth", type=_bytes_arg, default=0, help="bytes/s of file bodies, e.g. 2Mi (0: unlimited)"
    )
    parser.add_argument("--stall-after", type=_bytes_arg, default=0, help="stalled bodies stop after this many bytes")
    parser.add_argument("--stall-count", type=int, default=0, help="how many file bodies stall (-1: all)")
    parser.add_argument("--fail-count", type=int, default=0, help="how many file requests fail (-1: all)")
    parser.add_argument("--fail-status", type=int, default=503, help="their status code (default 503)")
    parser.add_argument("--token", help="the one valid token (Authorization: Bearer TOKEN)")
    parser.add_argument("--private", action="append", default=[], metavar="ORG/NAME", help="needs the token")
    parser.add_argument("--gated", action="append", default=[], metavar="ORG/NAME", help="files need the token")
    return parser


_UNITS = {"": 1, "k": 1000, "ki": 1024, "m": 1000**2, "mi": 1024**2, "g": 1000**3, "gi": 1024**3}


def _bytes_arg(value: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([kKmMgG]i?)?", value.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a byte count such as 512, 64Ki, 2Mi or 1G")
    return int(match[1]) * _UNITS[(match[2] or "").lower()]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.root.is_dir():
        print(f"kubellm hub: --root {args.root} is not a folder", file=sys.stderr)
        return 2
    if (args.private or args.gated) and not args.token:
        print("kubellm hub: --private and --gated need --token (the token that may read them)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    knobs = Knobs(
        bandwidth=args.bandwidth,
        stall_after_bytes=args.stall_after,
        stall_count=args.stall_count,
        fail_count=args.fail_count,
        fail_status=args.fail_status,
        token=args.token,
        private=args.private,
        gated=args.gated,
    )
    try:
        hub = HubServer(args.root, host=args.host, port=args.port, knobs=knobs)
    except OSError as error:
        print(f"kubellm hub: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    hub.start()
    repos = sorted(f"{o.name}/{n.name}" for o in args.root.iterdir() if o.is_dir() for n in o.iterdir() if n.is_dir())
    print(f"kubellm hub: serving {len(repos)} repo(s) from {args.root} at {hub.endpoint}", flush=True)
    print(f"  use it with: HF_ENDPOINT={hub.endpoint}", flush=True)
    stop.wait()
    hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
