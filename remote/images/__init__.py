"""The images in the cache: list them, remove some, prune old or excess ones.

Example::

    import remote
    for image in remote.images.list():
        print(image.name, image.sha256[:12], image.size, image.source)
    remote.images.prune(older_than=30 * 86400, max_size=20e9)
"""

from __future__ import annotations

import builtins
import time
from datetime import timedelta

from ..errors import UnknownImage
from .cache import CachedImage, entries, forget

__all__ = ["CachedImage", "list", "remove", "prune"]


def list() -> builtins.list[CachedImage]:  # noqa: A001 (remote.images.list reads well)
    """Every cached image, most recently used first."""
    return entries()


def remove(ref: str) -> builtins.list[CachedImage]:
    """Remove the cached images ``ref`` names: a source (URL, ``docker://...``), a name, or a
    sha256 (or a prefix of at least 8 hex digits). Returns what was removed.

    Raises:
        UnknownImage: nothing in the cache matches ``ref`` (a KeyError too).
    """
    chosen = [
        e
        for e in entries()
        if ref in (e.source, e.name) or (len(ref) >= 8 and e.sha256.startswith(ref.lower()))
    ]
    if not chosen:
        raise UnknownImage(f"no cached image matches {ref!r}; see remote.images.list() or `remote images ls`")
    forget(chosen)
    return chosen


def prune(
    older_than: float | timedelta | None = None, max_size: float | None = None
) -> builtins.list[CachedImage]:
    """Remove images not used for ``older_than`` (seconds or a timedelta), then the least
    recently used ones until the cache holds at most ``max_size`` bytes. Returns what was removed.
    """
    if isinstance(older_than, timedelta):
        older_than = older_than.total_seconds()
    kept = entries()  # most recently used first
    chosen: builtins.list[CachedImage] = []
    if older_than is not None:
        cutoff = time.time() - older_than
        chosen = [e for e in kept if e.last_used < cutoff]
        kept = [e for e in kept if e.last_used >= cutoff]
    if max_size is not None:
        sizes = {e.sha256: e.size for e in kept}  # a file shared by two sources counts once
        while kept and sum(sizes.values()) > max_size:
            last = kept.pop()
            chosen.append(last)
            if all(e.sha256 != last.sha256 for e in kept):
                sizes.pop(last.sha256, None)
    if chosen:
        forget(chosen)
    return chosen
