"""The emulator's serving certificate, so that clients built from its kubeconfig send their credentials.

client-go reads a kubeconfig's user (token, impersonation) only for a TLS server ("only try to read the auth
information if we are secure", clientcmd `DirectClientConfig.ClientConfig`): over plain HTTP, kubectl would be
`system:anonymous` and `--as` would be ignored. So the emulator also serves HTTPS with a self-signed certificate for
127.0.0.1, and its kubeconfigs carry that certificate as `certificate-authority-data`.

One certificate per process, made with the `openssl` command (no Python dependency), in a private temporary
directory removed at exit. Without `openssl`, `serving_certificate()` is None and kubeconfigs point at plain HTTP.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import pathlib
import shutil
import ssl
import subprocess
import tempfile


@dataclasses.dataclass(frozen=True)
class Certificate:
    cert_path: pathlib.Path
    key_path: pathlib.Path

    @property
    def pem(self) -> bytes:
        return self.cert_path.read_bytes()

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


@functools.lru_cache(maxsize=1)
def serving_certificate() -> Certificate | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    directory = pathlib.Path(tempfile.mkdtemp(prefix="kubellm-emulator-tls-"))
    atexit.register(shutil.rmtree, directory, True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    result = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=kubellm-emulator",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl could not make the emulator's certificate: {result.stderr.decode().strip()}")
    key.chmod(0o600)
    return Certificate(cert, key)
