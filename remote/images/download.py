"""Downloading an image over HTTPS into the cache, verified against its sha256.

The bytes go to a temporary file in the store's folder; a transfer cut short resumes with an
HTTP ``Range`` request (or starts over when the server ignores ranges), up to ``retries``
times. Only a complete file whose sha256 matches is handed back, ``fsync``-ed, for the
caller to rename into place. A progress line is drawn on a terminal, nothing otherwise.

``requests`` is imported here, on first use: the server side inside the container never
needs it. ``$REMOTE_CA_BUNDLE`` names a CA bundle to verify the server with.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from ..config import ca_bundle
from ..errors import ChecksumMismatch, DownloadError, ImageNotFound
from ..progress import Progress
from .cache import UNWRITABLE, cache_error

CHUNK = 1 << 16  # small: a broken read loses at most this much
#: Seconds to wait for a connection and between two reads.
TIMEOUTS = (15.0, 60.0)


def split_checksum(url: str) -> tuple[str, str | None]:
    """``"https://h/x.sif#sha256=abc"`` → ``("https://h/x.sif", "abc")``."""
    base, _, fragment = url.partition("#")
    if fragment.startswith("sha256="):
        return base, normalize_sha256(fragment[len("sha256=") :])
    return base, None


def normalize_sha256(value: str) -> str:
    """A sha256 as 64 lowercase hex digits (``sha256:`` prefix allowed); ValueError otherwise."""
    text = value.strip().lower().removeprefix("sha256:")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"not a sha256 (64 hex digits): {value!r:.80}")
    return text


def published_sha256(url: str) -> str:
    """The sha256 published beside ``url`` at ``<url>.sha256`` (``sha256sum`` format)."""
    import requests

    where = url + ".sha256"
    try:
        response = requests.get(where, timeout=TIMEOUTS, verify=_verify())
        response.raise_for_status()
        return normalize_sha256(response.text.split()[0])
    except (requests.RequestException, ValueError, IndexError) as exc:
        raise DownloadError(
            f"no sha256 for {url}: none given and none readable at {where} ({exc}); pass "
            "sha256=... or append #sha256=<64 hex digits> to the URL"
        ) from None


def download(url: str, sha256: str, folder: Path, retries: int = 3) -> Path:
    """Download ``url`` to a new temporary file in ``folder``, check its sha256 and return it.

    Raises:
        ImageNotFound: the server says 404/410.
        DownloadError: the transfer failed ``retries + 1`` times (cut short, refused, HTTP error).
        ChecksumMismatch: the complete file has another sha256.
        CacheError: ``folder`` is full or read-only.
    """
    import requests

    try:
        fd, name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=folder)
    except OSError as exc:
        raise cache_error(exc, folder) from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "r+b") as out:
            digest = _fetch(requests, url, out, retries)
            out.flush()
            os.fsync(out.fileno())
        if digest != sha256:
            raise ChecksumMismatch(
                f"{url} has sha256 {digest}, expected {sha256}: the file changed on the server or "
                "the pinned digest is wrong; nothing was stored. Check the source and the sha256"
            )
        return tmp
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in UNWRITABLE:
            raise cache_error(exc, folder) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fetch(requests: Any, url: str, out: IO[bytes], retries: int) -> str:
    """Fill ``out`` with the body of ``url``, resuming after breaks; return its sha256. A
    progress line is drawn on a terminal."""
    with Progress(f"downloading {Path(urlsplit(url).path).name or url}", unit="B") as progress:
        return _fetch_with(progress, requests, url, out, retries)


def _fetch_with(progress: Progress, requests: Any, url: str, out: IO[bytes], retries: int) -> str:
    digest = hashlib.sha256()
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
        have = out.tell()
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, stream=True, timeout=TIMEOUTS, verify=_verify(), headers=headers) as r:
                if r.status_code in (404, 410):
                    raise ImageNotFound(f"no image at {url} (HTTP {r.status_code}); check the URL")
                resumed = r.status_code == 206 and r.headers.get("Content-Range", "").startswith(
                    f"bytes {have}-"
                )
                if have and not resumed and r.status_code in (200, 206, 416):  # start over
                    out.seek(0)
                    out.truncate()
                    digest = hashlib.sha256()
                    if r.status_code != 200:
                        last_error = "the server could not resume the transfer"
                        continue
                elif r.status_code >= 400:
                    last_error = f"HTTP {r.status_code} {r.reason}"
                    if r.status_code < 500 and r.status_code not in (408, 429):
                        break  # a client error will not go away on retry
                    continue
                total = _expected_total(r, out.tell())
                progress.update(out.tell(), total)
                for chunk in r.iter_content(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.update(out.tell())
                if total is None or out.tell() == total:
                    return digest.hexdigest()
                last_error = f"the transfer stopped at {out.tell()} of {total} bytes"
        except requests.exceptions.SSLError as exc:
            raise DownloadError(
                f"TLS verification failed for {url}: {exc}; if the server uses a private CA, set "
                "REMOTE_CA_BUNDLE to its certificate bundle"
            ) from None
        except requests.RequestException as exc:
            last_error = f"{type(exc).__name__}: {exc}"
    raise DownloadError(
        f"downloading {url} failed after {retries + 1} attempts: {last_error}; nothing was stored. "
        "Check the network and the URL, then try again"
    )


def _expected_total(response: Any, have: int) -> int | None:
    """The full size of the file, from Content-Range or Content-Length, if the server says."""
    content_range = response.headers.get("Content-Range", "")
    if response.status_code == 206 and "/" in content_range:
        size = content_range.rpartition("/")[2]
        return int(size) if size.isdigit() else None
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and "Content-Encoding" not in response.headers:
        return have + int(length)
    return None


def _verify() -> str | bool:
    return ca_bundle() or True
