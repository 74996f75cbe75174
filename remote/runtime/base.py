"""What a runtime is: how the server is started from an image, as an argv."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

from ..images.sources import Image, resolve_image

#: A folder made visible to the server: (host path, path seen by the server, "ro"|"rw").
Bind = tuple[str, str, str]


class Runtime(ABC):
    """How the server is started. Subclasses say what an image is and build the argv;
    :class:`ServerProcess` runs and supervises that argv for all of them."""

    name: ClassVar[str]

    def resolve_image(self, image: str | os.PathLike[str], sha256: str | None = None) -> Image:
        """The image as the runtime will be given it, fetched or built into the cache if need
        be; raises ImageNotFound if there is none, ChecksumMismatch if ``sha256`` differs."""
        return resolve_image(image, sha256=sha256)

    @abstractmethod
    def command(
        self,
        image: str,
        python: str,
        args: Sequence[str],
        binds: Sequence[Bind] = (),
        env: Mapping[str, str] | None = None,
        name: str = "",
    ) -> list[str]:
        """The argv that runs ``python *args`` from ``image`` with ``binds``, and only the
        variables in ``env`` (the host's environment is not passed in). ``name`` names the
        container where the runtime has names."""

    def cleanup(self, name: str) -> None:
        """Remove what may outlive the started process (called once it has exited); by
        default nothing does."""
        return None
