"""Where an image comes from: one function, :func:`resolve_image`, for every kind of source.

=====================================  =============================================================
source                                 what happens
=====================================  =============================================================
``path/to/image.sif``, a sandbox dir   used in place (its sha256 is computed once and remembered)
``https://host/x.sif#sha256=<hex>``    downloaded once into the cache and verified; the sha256
                                       comes from ``sha256=``, the ``#sha256=`` fragment, or a
                                       published ``<url>.sha256`` file
``docker://``, ``oras://``,            ``apptainer pull`` once into the cache
``library://``, ``docker-archive:``,
``oci-archive:``
``path/to/recipe.def``                 ``apptainer build`` once into the cache (``--fakeroot`` when
                                       not root); rebuilt when the recipe, its ``build_args`` or
                                       the files its ``%files`` section copies change
=====================================  =============================================================

Every cached image is stored by its sha256 (see :mod:`remote.cache`); concurrent processes
resolving the same source fetch or build it once. ``sha256=`` pins any source: a resolved
image with another digest raises :class:`~remote.ChecksumMismatch`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import apptainer_executable
from ..errors import CacheError, ChecksumMismatch, ImageNotFound, ImagePullError
from . import cache
from .build import build_command, produce, recipe_key, run_apptainer
from .download import download, normalize_sha256, published_sha256, split_checksum

#: Sources that ``apptainer pull`` understands.
PULL_PREFIXES = ("docker://", "oras://", "library://", "docker-archive:", "oci-archive:")


@dataclass(frozen=True)
class Image:
    """A resolved image: a local file (or sandbox folder) ready for ``apptainer exec``."""

    path: str  #: absolute path of the ``.sif`` file or sandbox folder
    sha256: str | None  #: sha256 of the file; None for a sandbox folder
    source: str  #: what was asked for


def resolve_image(
    source: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    build_args: Mapping[str, str] | None = None,
) -> Image:
    """Turn an image source into a local image, fetching or building it into the cache if needed.

    Args:
        source: a local path, an ``https://`` URL, a ``docker://``/``oras://``/``library://``/
            ``docker-archive:``/``oci-archive:`` reference, or a ``.def`` recipe path.
        sha256: the expected sha256 of the image file (required for ``https://`` unless the URL
            carries ``#sha256=`` or the server publishes ``<url>.sha256``).
        build_args: ``--build-arg`` values for a recipe (``{"BASE": "base.sif"}``).

    Raises:
        ImageNotFound: no file, recipe or remote image at ``source``.
        ChecksumMismatch: the image's sha256 is not ``sha256``.
        DownloadError, ImagePullError, ImageBuildError: fetching or building failed.
        CacheError: the cache is read-only, full, or cannot be locked.
    """
    text = os.fspath(source)
    expected = normalize_sha256(sha256) if sha256 else None
    if text.startswith(("https://", "http://")):
        return _resolve_url(text, expected)
    if text.startswith(PULL_PREFIXES):
        return _resolve_pull(text, expected)
    path = Path(text).expanduser()
    if not path.exists():
        raise ImageNotFound(
            f"no image at {str(path.absolute())!r}; build one (see recipes/ and docs/images.md), "
            "or pass an existing .sif file, an https:// URL with its sha256, or a docker:// reference"
        )
    if path.suffix == ".def" and path.is_file():
        recipe, args = path.resolve(), dict(build_args or {})
        source = f"build:{recipe}#{recipe_key(recipe, args)}"
        return _produce(source, recipe.stem, expected, build_command(recipe, args))
    path = path.resolve()
    digest = None if path.is_dir() else cache.file_digest(path)
    _check(text, digest, expected)
    return Image(str(path), digest, text)


def _check(source: str, digest: str | None, expected: str | None) -> None:
    if expected is not None and digest != expected:
        raise ChecksumMismatch(
            f"image {source} has sha256 {digest}, but {expected} was pinned: it is not the image "
            "the experiment was run with. Find the pinned image, or re-pin deliberately"
        )


def _resolve_url(text: str, expected: str | None) -> Image:
    url, in_fragment = split_checksum(text)
    if expected and in_fragment and expected != in_fragment:
        raise ValueError(f"sha256={expected} disagrees with the URL's #sha256={in_fragment}")
    expected = expected or in_fragment
    if expected is None:
        if url.startswith("http://"):
            raise ValueError(
                f"{url}: a plain http:// download needs its sha256 (sha256=... or #sha256=...); "
                "a checksum fetched over http would prove nothing"
            )
        expected = published_sha256(url)
    path = cache.image_path(expected)
    if not path.is_file():
        with cache.image_lock(expected):
            if not path.is_file():  # nobody stored it while we waited
                cache.publish(download(url, expected, cache.staging_dir()), path)
    _note_use(url, Path(url).name, expected)
    return Image(str(path), expected, text)


def _resolve_pull(text: str, expected: str | None) -> Image:
    name = re.sub(r"^[a-z-]+:(//)?", "", text).rstrip("/").rpartition("/")[2]
    argv = [apptainer_executable(), "pull", "--force"]
    return _produce(
        text,
        name,
        expected,
        lambda out: run_apptainer([*argv, str(out), text], ImagePullError, f"pulling {text}"),
    )


def _produce(source: str, name: str, expected: str | None, make: Callable[[Path], None]) -> Image:
    """The cached image for ``source``, made once by ``make(output_path)``; an image whose
    sha256 is not ``expected`` is refused (a new one before it is stored)."""
    entry = produce(source, name, make, check=lambda digest: _check(source, digest, expected))
    _check(source, entry.sha256, expected)
    return Image(entry.path, entry.sha256, source)


def _note_use(source: str, name: str, sha256: str) -> None:
    """Index the image and its last use; a cache that has the image but cannot be written
    (a read-only shared cache) still serves it."""
    with contextlib.suppress(CacheError):
        cache.record(source, name, sha256)
