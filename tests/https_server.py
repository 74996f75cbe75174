"""A local HTTPS file server for the image download tests: a self-signed certificate made
with openssl, byte-range support, a request log, and switches to cut transfers short."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
from pathlib import Path


class ImageServer:
    """Serves ``files`` (URL path → bytes) on https://localhost:<port>/.

    ``truncate`` responses (a count; -1 = all) send the full Content-Length but only half
    the body, then close. ``requests`` logs (method, path, Range header) of every request.
    """

    def __init__(self, folder: Path, delay: float = 0.0) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate = 0
        self.requests: list[tuple[str, str, str | None]] = []
        self.ca_bundle = folder / "cert.pem"
        key = folder / "key.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(self.ca_bundle),
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )
        self.delay = delay
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                server.requests.append(("GET", self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                part = body[start:]
                if server.truncate:
                    server.truncate -= 1 if server.truncate > 0 else 0
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                for i in range(0, len(part), 1 << 16):
                    self.wfile.write(part[i : i + (1 << 16)])
                    if server.delay:
                        threading.Event().wait(server.delay)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_bundle, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"

    def gets(self, path: str) -> int:
        return sum(1 for method, p, _ in self.requests if method == "GET" and p == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
