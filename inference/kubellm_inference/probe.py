"""``kubellm probe live``: the seed's liveness script, for the LLMService liveness mode ``inference``.

It asks the local server for one short real generation (one token, greedy) with a timeout and exits non-zero
when no answer comes. A full queue (429) counts as alive: the worker is busy generating for users, and a
probe must not restart a pod for being popular. Standard library only, so the probe starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from pydantic import ValidationError

from kubellm.contract import ServerSettings

PROBE_PROMPT = "Say OK."


def probe(url: str, api_key: str | None, timeout_s: float) -> tuple[bool, str]:
    """(alive, what happened) for one short generation through ``url`` (the server's /ask)."""
    body = json.dumps({"text": PROBE_PROMPT, "max_new_tokens": 1, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        if error.code == 429:
            return True, "queue full: the server is busy generating"
        return False, f"HTTP {error.code}: {error.read(500).decode(errors='replace')}"
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as error:
        return False, f"no answer from {url} within {timeout_s}s: {error}"
    if not isinstance(answer, dict) or not isinstance(answer.get("response"), str):
        return False, f"unexpected answer: {answer!r}"
    return True, "generated"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kubellm probe", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["live"], help="which probe (live: one short real generation)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")
    parser.add_argument("--port", type=int, help="server port (default: KUBELLM_PORT)")
    args = parser.parse_args(argv)
    try:
        settings = ServerSettings()
    except ValidationError as error:
        print(f"probe: invalid settings: {error}", file=sys.stderr)
        return 2
    port = args.port or settings.port
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    alive, detail = probe(f"http://127.0.0.1:{port}/ask", api_key, args.timeout)
    print(f"probe live: {'ok' if alive else 'FAILED'}: {detail}", file=sys.stdout if alive else sys.stderr)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
