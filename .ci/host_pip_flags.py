"""Print the `podman build` flags that give a build the pip sources this host's pip uses.

On hosts where the package index is reachable only with the host's CA bundle and pip configuration, and where
wheels (the CPU torch wheel) lie in local folders, a build inside a container sees none of them. This prints one
`--volume` per file or folder that pip's effective configuration names (read-only, at the same path) and one for
a merged pip.conf at /etc/pip.conf holding that configuration (the files and PIP_* variables, as `pip config
list` reports them). Usage: python3 .ci/host_pip_flags.py OUT_DIR  (OUT_DIR receives the merged pip.conf).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

# Options whose values are paths or URLs the build must be able to read.
PATH_OPTIONS = {"cert", "client-cert", "constraint", "requirement", "find-links", "index-url", "extra-index-url"}


def effective_options() -> dict[str, str]:
    """pip's merged configuration: files first, then PIP_* variables (`:env:`), which override them."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    files: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        section, _, option = key.rpartition(".")
        value = value.strip().strip("'\"")
        if section == ":env:":
            env[option] = value
        elif section in {"global", "install", "download", "wheel"}:
            files.setdefault(option, value)
    return {**files, **env}


def mounts_for(option: str, value: str) -> set[Path]:
    found: set[Path] = set()
    for item in value.split():
        parsed = urlparse(item)
        if parsed.scheme in {"http", "https"}:
            continue
        path = Path(parsed.path if parsed.scheme == "file" else item)
        if not path.exists():
            continue
        # A file:// simple index links its files relative to its parent (../../files/...).
        if option.endswith("index-url") and path.name == "simple":
            path = path.parent
        found.add(path)
    return found


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    options = effective_options()
    conf = out / "pip.conf"
    conf.write_text("[global]\n" + "".join(f"{key} = {value}\n" for key, value in sorted(options.items())))
    mounts: set[Path] = set()
    for option, value in options.items():
        if option in PATH_OPTIONS:
            mounts |= mounts_for(option, value)
    flags = [f"--volume={conf.resolve()}:/etc/pip.conf:ro"]
    # Mounted at the path pip names, from the real file (the CA bundle may be a link).
    flags += [f"--volume={path.resolve()}:{path}:ro" for path in sorted(mounts)]
    print(" ".join(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
