"""Look inside an image: what it has (:func:`inspect_image`), and a shell in it that sees what
the server sees (:func:`shell_command`).

    report = remote.inspect_image("envs.sif")
    print(report.python, report.gymnasium, report.codec, len(report.ids))
    print(report.ids_of("ale_py")[:3])

The report comes from one container run: a stdlib-only probe on the image's Python, with the
payload bound read-only and on ``sys.path`` as the server's bootstrap puts it (the host's
``remote`` first, its dependencies last). The probe prints JSON; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .. import config
from ..errors import CallTimeout, ContainerStartError
from ..runner import parse_bind, server_binds_env
from ..runtime import Apptainer, Runtime, get_runtime
from ..server.envs import KNOWN_PACKAGES
from .payload import payload_dir

#: Run by the image's Python: ``python3 -c PROBE <payload dir> <request JSON>``; prints the
#: report as JSON on stdout (what imported packages print goes to stderr).
PROBE = r"""
import importlib, importlib.util, json, os, sys, time
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
payload, request = sys.argv[1], json.loads(sys.argv[2])
if payload:
    sys.path.insert(0, payload + "/top")
    sys.path.append(payload + "/deps")


def failure(exc):
    return (type(exc).__name__ + ": " + str(exc))[:500]


def version(name, module):
    found = getattr(module, "__version__", None)
    if isinstance(found, str):
        return found
    try:
        from importlib import metadata
        return metadata.version(name)
    except Exception:
        return None


def load(name):
    print("remote inspect: importing " + name, file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        module = importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        return None, failure(exc), time.perf_counter() - start
    return module, None, time.perf_counter() - start


def plugins():
    try:
        from importlib import metadata
        points = metadata.entry_points()
        points = points.select(group="gymnasium.envs") if hasattr(points, "select") else points.get(
            "gymnasium.envs", [])
        return sorted({p.value.split(":")[0].split(".")[0] for p in points} - {"gymnasium"})
    except Exception:
        return []


def owner(spec, found):
    point = spec.entry_point
    module = point.split(":")[0] if isinstance(point, str) else getattr(point, "__module__", None) or ""
    top = module.split(".")[0]
    return top if top in found else "gymnasium"


report = {"python": sys.version.split()[0], "executable": sys.executable, "errors": {}}
modules = {}
for name in ("numpy", "gymnasium", "msgpack"):
    module, error, _ = load(name)
    modules[name] = module
    report[name] = version(name, module) if module is not None else None
    if error:
        report["errors"][name] = error
packer = getattr(modules["msgpack"], "Packer", None)
report["codec"] = "missing" if packer is None else (
    "compiled" if packer.__module__ == "msgpack._cmsgpack" else "pure-python")
where = getattr(modules["msgpack"], "__file__", None) or ""
report["msgpack_from"] = "none" if packer is None else (
    "payload" if payload and where.startswith(payload) else "image")
groups, absent = [], []
gym = modules["gymnasium"]
if gym is not None:
    registry = gym.envs.registry
    found = plugins()
    base = {}
    for env_id, spec in list(registry.items()):
        base.setdefault(owner(spec, found), []).append(env_id)
    for package, ids in base.items():
        groups.append({"package": package, "version": version(package, sys.modules.get(package)),
                       "ids": sorted(ids), "imported": False, "error": None, "seconds": 0.0})
    names = list(dict.fromkeys([*request["packages"], *found, *request["imports"]]))
    for name in names:
        if name not in request["imports"]:
            try:
                installed = importlib.util.find_spec(name) is not None
            except (Exception, SystemExit):
                installed = False
            if not installed:
                absent.append(name)
                continue
        before = set(registry)
        module, error, seconds = load(name)
        groups.append({"package": name, "version": version(name, module) if module is not None else None,
                       "ids": sorted(set(registry) - before), "imported": True, "error": error,
                       "seconds": round(seconds, 3)})
report["packages"], report["absent"] = groups, absent
report["server_error"] = None
if payload:
    try:
        import remote.server
    except (Exception, SystemExit) as exc:
        report["server_error"] = failure(exc)
out.write(json.dumps(report))
out.flush()
"""


@dataclass(frozen=True)
class PackageIds:
    """The env ids one package registers in the image."""

    package: str  #: the module imported (``"gymnasium"``: what gymnasium's registry has after import)
    version: str | None
    ids: tuple[str, ...]
    imported: bool = True  #: False for ``gymnasium`` itself and plugins it loads on its import
    error: str | None = None  #: why importing the package failed, if it did
    seconds: float = 0.0  #: how long its import took


@dataclass(frozen=True)
class ImageReport:
    """What an image has, seen from inside it: versions, codec, and the env ids it registers."""

    image: str  #: the resolved image (what the runtime runs)
    source: str  #: what was asked for
    sha256: str | None
    size: int | None  #: bytes of the image file (or of a sandbox folder's files)
    labels: dict[str, str]  #: the image's labels (Apptainer)
    python: str
    numpy: str | None
    gymnasium: str | None
    msgpack: str | None
    codec: str  #: the server's msgpack there: ``"compiled"``, ``"pure-python"`` or ``"missing"``
    msgpack_from: str  #: ``"image"`` (its own msgpack), ``"payload"`` (the host's copy) or ``"none"``
    server_error: str | None  #: why ``import remote.server`` fails there; None when it works
    packages: tuple[PackageIds, ...]  #: gymnasium's own ids first, then each package imported
    absent: tuple[str, ...]  #: well-known packages (see ``KNOWN_PACKAGES``) not installed
    errors: dict[str, str]  #: import errors of numpy, gymnasium or msgpack

    @property
    def ids(self) -> list[str]:
        """Every env id the image registers (after importing the packages), sorted."""
        return sorted({env_id for group in self.packages for env_id in group.ids})

    def ids_of(self, package: str) -> list[str]:
        """The ids ``package`` registers (``"gymnasium"``: gymnasium's own)."""
        return [env_id for group in self.packages if group.package == package for env_id in group.ids]

    def to_dict(self) -> dict:
        """Everything, as plain JSON-ready data."""
        return {**asdict(self), "ids": self.ids}


def inspect_image(
    image: str | os.PathLike[str],
    *,
    imports: Sequence[str] = (),
    sha256: str | None = None,
    binds: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    runtime: str | Runtime | None = None,
    python: str = "python3",
    timeout: float | None = None,
) -> ImageReport:
    """Report what ``image`` has: sha256, size, labels, and from inside it (one container run)
    Python, numpy, gymnasium and msgpack versions, the codec the server would use, and the env
    ids it registers, by package: gymnasium's registry after import, then the ids each installed
    well-known package (``remote.server.envs.KNOWN_PACKAGES``), each declared gymnasium plugin
    and each of ``imports`` registers when imported. A failed import is reported, not raised.

    ``image``, ``sha256``, ``binds``, ``env``, ``runtime`` and ``python`` mean what they mean for
    :class:`remote.RemoteRunner`; ``timeout``: seconds the probe may take (default 300, or
    ``$REMOTE_START_TIMEOUT`` if longer).

    Raises:
        ImageNotFound, ChecksumMismatch: as :func:`remote.images.resolve_image`.
        ContainerStartError: the probe could not run or report (its output is in the message).
        CallTimeout: the probe took longer than ``timeout``.
    """
    if isinstance(imports, str):
        raise TypeError(f"imports= takes a list of module names, not {imports!r:.60}")
    chosen = get_runtime(runtime)
    resolved = chosen.resolve_image(image, sha256=sha256)
    payload = str(payload_dir())
    mounts, variables = server_binds_env(payload, [parse_bind(b) for b in binds], env)
    request = {
        "packages": list(dict.fromkeys(package for _, package in KNOWN_PACKAGES)),
        "imports": list(imports),
    }
    argv = chosen.command(
        resolved.path, python, ["-c", PROBE, payload, json.dumps(request)], mounts, variables
    )
    limit = timeout if timeout is not None else max(300.0, config.start_timeout())
    found = _probe(argv, resolved.path, limit)
    return ImageReport(
        image=resolved.path,
        source=resolved.source,
        sha256=resolved.sha256,
        size=_size_of(resolved.path),
        labels=_labels(chosen, resolved.path),
        python=str(found.get("python")),
        numpy=found.get("numpy"),
        gymnasium=found.get("gymnasium"),
        msgpack=found.get("msgpack"),
        codec=str(found.get("codec", "missing")),
        msgpack_from=str(found.get("msgpack_from", "image")),
        server_error=found.get("server_error"),
        packages=tuple(
            PackageIds(
                package=str(group["package"]),
                version=group.get("version"),
                ids=tuple(map(str, group.get("ids", ()))),
                imported=bool(group.get("imported", True)),
                error=group.get("error"),
                seconds=float(group.get("seconds", 0.0)),
            )
            for group in found.get("packages", ())
        ),
        absent=tuple(map(str, found.get("absent", ()))),
        errors={str(k): str(v) for k, v in dict(found.get("errors", {})).items()},
    )


def _probe(argv: list[str], image: str, timeout: float) -> dict:
    """Run the probe's argv; its JSON report."""
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise CallTimeout(
            f"inspecting {image} took more than {timeout:g} s (an import that hangs? raise timeout=)"
        ) from None
    except OSError as exc:
        raise ContainerStartError(f"could not run the probe in {image}: {exc}") from None
    tail = "\n".join(done.stderr.strip().splitlines()[-20:])
    try:
        found = json.loads(done.stdout)
    except ValueError:
        found = None
    if done.returncode != 0 or not isinstance(found, dict):
        raise ContainerStartError(
            f"the probe in {image} exited with code {done.returncode} without a report; check that "
            "the image has Python 3 (its output is below; the last 'importing' line names the import "
            "it was in)",
            tail,
        )
    return found


def _size_of(path: str) -> int | None:
    """Bytes of the file, or of the files under a sandbox folder; None if unreadable."""
    try:
        if not os.path.isdir(path):
            return os.path.getsize(path)
        return sum(
            os.lstat(os.path.join(folder, name)).st_size
            for folder, _, names in os.walk(path)
            for name in names
        )
    except OSError:
        return None


def _labels(chosen: Runtime, path: str) -> dict[str, str]:
    """The image's labels (``apptainer inspect --json --labels``); none for other runtimes."""
    if not isinstance(chosen, Apptainer):
        return {}
    try:
        done = subprocess.run(
            [chosen.executable, "inspect", "--json", "--labels", path],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        data = json.loads(done.stdout) if done.returncode == 0 else {}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}
    labels = data.get("data", {}).get("attributes", {}).get("labels", data) if isinstance(data, dict) else {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def shell_command(
    image: str | os.PathLike[str],
    command: Sequence[str] = (),
    *,
    binds: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    runtime: str | Runtime | None = None,
    sha256: str | None = None,
) -> list[str]:
    """The argv of ``apptainer shell`` in ``image`` (or ``apptainer exec`` of ``command``) with
    the server's binds and variables (:func:`remote.runner.server_binds_env`), the same flags as
    the server's ``exec``, and the payload on ``PYTHONPATH``: ``python3 -c "import remote.server"``
    works as in the server. ``PYTHONPATH`` is the payload's ``top`` (the host's ``remote``), then
    ``env``'s ``PYTHONPATH``, then the payload's dependencies: those come before the image's own
    copies here, where the server puts them last; and ``python3 -c`` or a script puts its own
    folder before them all, where the server's bootstrap puts the payload first.

    Raises:
        ValueError: a runtime other than Apptainer (or SingularityCE).
    """
    chosen = get_runtime(runtime)
    if not isinstance(chosen, Apptainer):
        raise ValueError(
            f"remote shell runs Apptainer images (--runtime apptainer or singularity), not {runtime}"
        )
    path = chosen.resolve_image(image, sha256=sha256).path
    payload = str(payload_dir())
    folders = [f"{payload}/top", *filter(None, [(env or {}).get("PYTHONPATH")]), f"{payload}/deps"]
    variables = {**(env or {}), "PYTHONPATH": os.pathsep.join(folders)}
    mounts, variables = server_binds_env(payload, [parse_bind(b) for b in binds], variables)
    if command:
        return chosen.command(path, command[0], list(command[1:]), mounts, variables)
    argv = chosen.command(path, "", [], mounts, variables)  # [..., "exec", flags..., image, ""]
    assert argv[1] == "exec" and argv[-2:] == [path, ""]
    return [argv[0], "shell", *argv[2:-1]]
