"""Container images: where an image argument points, checked before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ImageNotFound


def resolve_image(image: str | os.PathLike[str]) -> str:
    """Return the absolute path of a local image (a ``.sif`` file or a sandbox folder).

    Raises:
        ImageNotFound: nothing is at that path.
    """
    text = os.fspath(image)
    if "://" in text:
        raise ImageNotFound(
            f"image {text!r}: only local image paths are supported so far; pull it first "
            f"(apptainer pull image.sif {text}) and pass the .sif path"
        )
    path = Path(text).expanduser()
    if not path.exists():
        raise ImageNotFound(
            f"no image at {str(path.absolute())!r}; build one (see recipes/ and "
            "scripts/build-image.sh) or pass the path of an existing .sif file"
        )
    return str(path.resolve())
