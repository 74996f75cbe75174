"""Experiment identifiers: a lock file that pins each experiment to one exact image.

The file is JSON, kept in version control beside the experiment code::

    {
      "version": 1,
      "experiments": {
        "exp:0.01": {
          "image": "https://example.org/images/bench.sif",
          "sha256": "4f1c...e9",
          "protocol": 2
        }
      }
    }

``RemoteRunner(experiment="exp:0.01")`` resolves the image through it and refuses an image
with another sha256 (:class:`~remote.ChecksumMismatch`) or a server speaking another protocol
version (:class:`~remote.VersionMismatch`). :func:`pin` writes an entry. The file is found at
the ``path`` argument, else ``$REMOTE_EXPERIMENTS``, else ``./remote-experiments.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import experiments_file
from .errors import UnknownExperiment, VersionMismatch
from .images.cache import atomic_file
from .images.sources import Image, resolve_image
from .protocol.ops import PROTOCOL_VERSION

DEFAULT_FILE = "remote-experiments.json"


@dataclass(frozen=True)
class Experiment:
    """One pinned experiment: which image, exactly, and which protocol version."""

    id: str
    image: str  #: the image source: a URL, a ``docker://`` reference, a path, a recipe
    sha256: str  #: sha256 of the image file
    protocol: int  #: the wire protocol version of remote it was run with


def lock_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The lock file: ``path``, else ``$REMOTE_EXPERIMENTS``, else ``./remote-experiments.json``."""
    return Path(path or experiments_file() or DEFAULT_FILE).expanduser().absolute()


def load(experiment_id: str, path: str | os.PathLike[str] | None = None) -> Experiment:
    """The experiment ``experiment_id`` from the lock file.

    Raises:
        UnknownExperiment: the file or the id is missing, or the entry is malformed.
    """
    file = lock_file(path)
    entry = _read(file).get(experiment_id)
    if entry is None:
        raise UnknownExperiment(
            f"no experiment {experiment_id!r} in {file}; pin it with "
            f"remote.experiments.pin({experiment_id!r}, image=...) or set REMOTE_EXPERIMENTS to the file"
        )
    try:
        return Experiment(experiment_id, str(entry["image"]), str(entry["sha256"]), int(entry["protocol"]))
    except (KeyError, TypeError, ValueError):
        raise UnknownExperiment(
            f"experiment {experiment_id!r} in {file} needs image, sha256 and protocol"
        ) from None


def resolve(experiment_id: str, path: str | os.PathLike[str] | None = None) -> Image:
    """Resolve the experiment's image and check its sha256 and protocol version.

    Raises:
        UnknownExperiment, VersionMismatch, ChecksumMismatch, and what resolve_image raises.
    """
    experiment = load(experiment_id, path)
    if experiment.protocol != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"experiment {experiment_id!r} was pinned with protocol {experiment.protocol}; this remote "
            f"speaks {PROTOCOL_VERSION}: install the remote version it was run with"
        )
    source = experiment.image
    if _is_path(source):  # relative to the lock file, which travels with the experiment code
        source = str(lock_file(path).parent / source)
    return resolve_image(source, sha256=experiment.sha256)


def pin(
    experiment_id: str,
    image: str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
) -> Experiment:
    """Resolve ``image`` and write its source and sha256 under ``experiment_id`` in the lock file
    (replacing an entry with that id)."""
    resolved = resolve_image(image, sha256=sha256)
    if resolved.sha256 is None:
        raise ValueError(f"{image}: a sandbox folder has no sha256 to pin; build a .sif file from it")
    file = lock_file(path)
    source = os.fspath(image)
    if _is_path(source):  # relative when it sits beside the lock file, else absolute
        absolute = Path(source).expanduser().absolute()
        source = str(absolute.relative_to(file.parent) if absolute.is_relative_to(file.parent) else absolute)
    experiment = Experiment(experiment_id, source, resolved.sha256, PROTOCOL_VERSION)
    experiments = _read(file)
    experiments[experiment_id] = {k: v for k, v in asdict(experiment).items() if k != "id"}
    with atomic_file(file, "w") as f:
        json.dump({"version": 1, "experiments": experiments}, f, indent=2, sort_keys=True)
        f.write("\n")
    return experiment


def _is_path(source: str) -> bool:
    return "://" not in source and not source.startswith(("docker-archive:", "oci-archive:"))


def _read(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UnknownExperiment(f"cannot read the experiments lock file {file}: {exc}") from None
    experiments = data.get("experiments") if isinstance(data, dict) else None
    if not isinstance(experiments, dict):
        raise UnknownExperiment(f"{file} is not an experiments lock file (no 'experiments' map)")
    return experiments
