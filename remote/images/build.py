"""Building images: from an Apptainer recipe (``.def``), and derived images (a base plus pip and
apt packages and files, :func:`build_derived`), with ``apptainer build`` run rootless where it can.

A derived build writes its recipe into the cache's staging folder and hands the host's pip
settings to ``%post`` as ``scripts/build-image.sh`` does: ``pip config list``, ``PIP_*`` and proxy
variables, with the files they name (CA bundle, constraints) copied into a folder bound
read-only at ``/mnt`` (``/mnt/pip.env`` is sourced). A base without pip gets the host's own
pip package (pure Python) bound read-only at ``/mnt/pip-wheel/pip`` and run by the image's
``python3``. Nothing host-specific (index, mirror) goes into the recipe, which the SIF keeps.

Same inputs, same image: the result is stored by sha256 under a key over what it is made of
(the base's sha256, not its path; the packages; the generated ``%post``; remote's version) and
the names, sizes and mtimes of the files copied in; a second identical build returns the
cached image.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import apptainer_executable
from ..errors import CacheError, ImageBuildError, ImageNotFound
from . import cache

#: Registry references a derived build can start from, and their ``Bootstrap:`` agent.
REGISTRY_BOOTSTRAPS = {"docker://": "docker", "oras://": "oras", "library://": "library"}

#: What apptainer prints when ``--fakeroot`` cannot get a user namespace here.
FAKEROOT_FAILURES = re.compile(
    r"fakeroot requires|fakeroot used without user namespace|could not use fakeroot|"
    r"no mapping entry found in /etc/sub[ug]id|user namespaces? (are|is) (not enabled|disabled)|"
    r"(creat|unshar)\w* (a )?user namespace\w*: (operation not permitted|invalid argument)|"
    r"max_user_namespaces",
    re.IGNORECASE,
)

FAKEROOT_HINT = (
    "this machine does not let unprivileged users build images: `apptainer build --fakeroot` needs "
    "user namespaces (kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0) and "
    "ideally an /etc/subuid and /etc/subgid entry for you (`apptainer config fakeroot --add "
    "$USER`). Ask the admin for that, or build the image on a machine where you can (your "
    "laptop, a CI runner) and fetch it here with `remote pull <URL> --sha256 <hex>` or copy the "
    ".sif over"
)


def build_command(
    recipe: Path, build_args: Mapping[str, str], binds: Sequence[str] = (), what: str | None = None
) -> Callable[[Path], None]:
    """A function that builds ``recipe`` (an absolute path) into the file it is given; ``binds``
    (``SRC:DEST[:ro]``) are mounted for ``%post`` only; ``what`` names it in messages."""
    # lz4: builds several times faster than the default gzip and starts faster; files are larger
    argv = [apptainer_executable(), "build", "--force", "--mksquashfs-args", "-comp lz4"]
    if os.geteuid() != 0:
        argv.append("--fakeroot")
    for key, value in sorted(build_args.items()):
        argv += ["--build-arg", f"{key}={value}"]
    env = _build_env()
    if binds:  # via APPTAINER_BIND: `build --bind` warns "destination is already in the mount point list"
        env["APPTAINER_BIND"] = ",".join(filter(None, [env.get("APPTAINER_BIND"), *binds]))
    what = what or f"building {recipe}"
    return lambda out: run_apptainer([*argv, str(out), str(recipe)], ImageBuildError, what, env)


def run_apptainer(
    argv: list[str], error: type[ImageBuildError], what: str, env: dict[str, str] | None = None
) -> None:
    """Run ``apptainer pull``/``build``; a failure raises ``error`` with the end of its output
    (and first what a recipe's ``remote: ...`` line or a refused ``--fakeroot`` says)."""
    if sys.stderr.isatty():
        sys.stderr.write(f"remote: {what} (this can take minutes)\n")
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        tail = "\n".join(output.splitlines()[-25:])
        if "no space left on device" in output.lower():
            raise CacheError(
                f"{what}: no space left on device (the cache is at {cache.cache_dir()}, apptainer "
                "also uses APPTAINER_TMPDIR); free space or set REMOTE_CACHE to a folder with room"
            )
        if "--fakeroot" in argv and FAKEROOT_FAILURES.search(output):
            raise error(f"{what} failed: {FAKEROOT_HINT}", tail)
        said = [line[len("remote: ") :] for line in output.splitlines() if line.startswith("remote: ")]
        reason = f": {said[-1]}" if said else ""
        raise error(f"{what} failed (apptainer exit code {done.returncode}){reason}", tail)


def recipe_key(recipe: Path, build_args: dict[str, str]) -> str:
    """What a build depends on: the recipe text, the build args and the files ``%files`` copies
    (by name, size and mtime; paths are relative to the current directory, as for apptainer)."""
    text = recipe.read_text()
    sources: dict[str, Path] = {}
    for line in _section(text, "files"):
        pattern = line.split()[0]
        for match in sorted(glob.glob(pattern)):
            sources[match] = Path(match)
    digest = hashlib.sha256(json.dumps([text, sorted(build_args.items())]).encode())
    digest.update(cache.fingerprint(sources).encode())
    return digest.hexdigest()[:16]


def _section(text: str, name: str) -> list[str]:
    """The non-comment lines of the recipe's ``%name`` sections (not ``%files from <stage>``)."""
    lines, inside = [], False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("%"):
            inside = line.split() == [f"%{name}"]
        elif inside and line and not line.startswith("#"):
            lines.append(line)
    return lines


def produce(
    source: str,
    name: str,
    make: Callable[[Path], None],
    check: Callable[[str], None] | None = None,
) -> cache.CachedImage:
    """The cached image for ``source``, made once by ``make(output_path)`` under its lock and
    stored by its sha256; ``check(sha256)`` may refuse a new one before it is stored."""
    entry = cache.lookup(source)
    if entry is None:
        with cache.image_lock(source):
            entry = cache.lookup(source)
            if entry is None:
                fd, tmp_name = tempfile.mkstemp(prefix=".make-", suffix=".sif", dir=cache.staging_dir())
                os.close(fd)
                tmp = Path(tmp_name)
                try:
                    make(tmp)
                    digest = cache.sha256_file(tmp)
                    if check is not None:
                        check(digest)
                    cache.publish(tmp, cache.image_path(digest))
                finally:
                    tmp.unlink(missing_ok=True)
                return cache.record(source, name, digest)  # under the lock: the waiters find it
    with contextlib.suppress(CacheError):  # a read-only shared cache still serves it
        entry = cache.record(source, name, entry.sha256)
    return entry


# -- what the host hands to a build: pip settings, pip itself, the Debian mirror -----------------

_PROXIES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


def host_pip_settings() -> dict[str, str]:
    """This machine's effective pip settings as ``PIP_*`` variables: ``pip config list`` (an
    ``install`` section over ``global``, the environment over both, as pip ranks them), then the
    ``PIP_*`` and proxy variables of this process."""
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    rank = {"global": 0, "install": 1, ":env:": 2}
    items = []
    for line in listed.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.partition(".")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if section in rank:
            items.append((rank[section], key, value))
    settings = {
        f"PIP_{key.upper().replace('-', '_')}": value for _, key, value in sorted(items, key=lambda i: i[0])
    }
    settings.update((k, v) for k, v in os.environ.items() if k.startswith("PIP_") or k.lower() in _PROXIES)
    return {k: v for k, v in settings.items() if "\n" not in v}


def stage_pip_settings(folder: Path, settings: Mapping[str, str]) -> list[str]:
    """Write ``folder/pip.env`` (bound at ``/mnt``) exporting ``settings``; the files they name are
    copied beside it and the values rewritten to ``/mnt/f<n>``; folders (a local index, find-links)
    are left out: they are not there inside. Returns the names passed."""
    lines, passed, copied = [], [], 0
    for key, value in sorted(settings.items()):
        kept = []
        for token in value.split():
            path = token.removeprefix("file://")
            if path.startswith("/") and Path(path).is_file():
                copied += 1
                shutil.copyfile(path, folder / f"f{copied}")
                kept.append(f"{token[: len(token) - len(path)]}/mnt/f{copied}")
            elif not path.startswith("/"):
                kept.append(token)
        if kept:
            lines.append(f"export {key}={shlex.quote(' '.join(kept))}\n")
            passed.append(key)
    (folder / "pip.env").write_text("".join(lines))
    return passed


def host_pip() -> tuple[Path, tuple[int, int]] | None:
    """This interpreter's ``pip`` package folder and the oldest Python it runs on, if it is pure
    Python (then the image's ``python3`` can run it in place); else None."""
    spec = importlib.util.find_spec("pip")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / "__main__.py").is_file() or any(folder.rglob("*.so")):
        return None
    try:
        requires = importlib.metadata.distribution("pip").metadata.get("Requires-Python") or ""
    except importlib.metadata.PackageNotFoundError:
        requires = ""
    found = re.search(r">=\s*(\d+)\.(\d+)", requires)
    return folder, (int(found[1]), int(found[2])) if found else (3, 7)


def debian_mirror() -> str | None:
    """The Debian archive this machine's apt uses (read at run time, as build-image.sh does)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listed = subprocess.run(
            ["apt-get", "indextargets", "--format", "$(REPO_URI)", "Label: Debian", "Identifier: Packages"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        if listed:
            return listed[0].rstrip("/")
    texts = []
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        with contextlib.suppress(OSError):
            texts.append(Path(path).read_text())
    for text in texts:  # deb822 stanzas, then one-line entries; not the security archive
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            if uris and re.search(r"^Types:.*\bdeb\b", stanza, re.MULTILINE) and "security" not in stanza:
                return uris[1].rstrip("/")
        for line in text.splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and "security" not in words[2]:
                return words[1].rstrip("/")
    return None


# -- derived images: a base plus pip and apt packages and files ---------------------------------


@dataclass(frozen=True)
class Base:
    """What a derived image starts from: its ``Bootstrap:`` agent and ``From:`` line."""

    bootstrap: str  #: ``localimage``, ``docker``, ``oras`` or ``library``
    ref: str  #: the ``From:`` value: an absolute path, or a registry reference without its scheme
    sha256: str | None  #: sha256 of a local image file; None for a folder or a registry reference
    source: str  #: what was asked for

    @property
    def name(self) -> str:
        """A short name: the file or repository name."""
        return Path(self.ref.split("@")[0].rstrip("/")).name.split(":")[0] or "image"


def resolve_base(source: str | os.PathLike[str], relative_to: Path | None = None) -> Base:
    """The base of a derived build: a ``.sif`` (or sandbox folder), a ``.def`` recipe (built into the
    cache first), or a ``docker://``, ``oras://`` or ``library://`` reference.

    Raises:
        ImageNotFound: no file at the path.
        ValueError: a source a build cannot start from (an https URL: ``remote pull`` it first).
    """
    text = os.fspath(source)
    for prefix, agent in REGISTRY_BOOTSTRAPS.items():
        if text.startswith(prefix):
            return Base(agent, text[len(prefix) :], None, text)
    if re.match(r"^[a-z][a-z0-9+-]*:", text):
        raise ValueError(
            f"{text!r}: a build starts from a .sif, a .def recipe or a docker://, oras:// or library:// "
            "reference; fetch anything else first (`remote pull SOURCE`) and build --from the .sif"
        )
    path = Path(text).expanduser()
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if not path.exists():
        raise ImageNotFound(f"no base image at {str(path.absolute())!r}")
    path = path.resolve()
    if path.suffix == ".def" and path.is_file():
        built = produce(f"build:{path}#{recipe_key(path, {})}", path.stem, build_command(path, {}))
        return Base("localimage", built.path, built.sha256, text)
    return Base("localimage", str(path), None if path.is_dir() else cache.file_digest(path), text)


def split_file(spec: str) -> tuple[Path, str]:
    """``SRC:DEST`` → (absolute SRC, DEST); DEST must be an absolute path in the image."""
    src, sep, dest = spec.rpartition(":")
    if not sep or not src or not dest.startswith("/"):
        raise ValueError(f"--files {spec!r}: expected SRC:DEST with DEST an absolute path in the image")
    path = Path(src).expanduser().resolve()
    if not path.exists():
        raise ValueError(f"--files {spec!r}: no file or folder at {str(path)!r}")
    if any(c.isspace() for c in str(path) + dest):
        raise ValueError(f"--files {spec!r}: apptainer's %files takes no whitespace in paths")
    return path, dest


def post_preamble(strict: bool = True) -> str:
    """Shell lines that start a ``%post``: the host's pip settings, and a ``pip`` (``pip3``,
    ``python3 -m pip``) that works where the image has none, with the host's pure-Python pip."""
    low = host_pip()
    need = low[1] if low else (3, 7)
    return f"""\
set -e{"u" if strict else ""}
export LANG=C.UTF-8 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_CACHE_DIR=1
# the host's pip settings (index, CA bundle, constraints), bound at /mnt for this build only;
# not traced: an index URL may hold a token
case $- in *x*) remote_x=1;; *) remote_x=;; esac
{{ set +x; }} 2>/dev/null
if [ -f /mnt/pip.env ]; then . /mnt/pip.env; fi
if [ -n "$remote_x" ]; then set -x; fi
remote_fail() {{ echo "remote: $*" >&2; exit 1; }}
if ! command -v python3 >/dev/null 2>&1; then
    pip() {{ remote_fail "the base image has no python3, so pip cannot install into it"; }}
elif python3 -m pip --version >/dev/null 2>&1; then
    pip() {{ python3 -m pip "$@"; }}
elif [ -f /mnt/pip-wheel/pip/__main__.py ] \\
        && python3 -c 'import sys; sys.exit(sys.version_info < {need})'; then
    # the host's pip, run in place by the image's python3 (no pip is left in the image)
    export PYTHONPATH="/mnt/pip-wheel${{PYTHONPATH:+:$PYTHONPATH}}"
    pip() {{ python3 /mnt/pip-wheel/pip "$@"; }}
else
    pip() {{ remote_fail "the base image has no pip and the host's pip cannot run on its python3" \\
        "(it needs a pure-Python pip on the host and Python {need[0]}.{need[1]}+ in the image)"; }}
fi
pip3() {{ pip "$@"; }}
"""


APT_POST = """\
# apt: Debian from the host's mirror (a private sources list, removed after), else the image's own
remote_os=$( (. /etc/os-release && echo "${ID:-}${ID_LIKE:+ $ID_LIKE}") 2>/dev/null || true)
case " $remote_os " in
    *" debian "*|*" ubuntu "*) ;;
    *) remote_fail "--apt needs a Debian or Ubuntu base; this one is '${remote_os:-unknown}'" \\
        "(use its own package manager in a recipe, or a Debian-based image)";;
esac
command -v apt-get >/dev/null 2>&1 || remote_fail "--apt: the base image has no apt-get"
set -- -o APT::Sandbox::User=root -o Acquire::Retries=3
remote_codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ "${remote_os%% *}" = debian ] && [ -s /mnt/apt-mirror ] && [ -n "$remote_codename" ]; then
    echo "deb $(cat /mnt/apt-mirror) $remote_codename main" > /etc/apt/remote-build.list
    set -- "$@" -o Dir::Etc::SourceList=/etc/apt/remote-build.list -o Dir::Etc::SourceParts=/nonexistent
fi
export DEBIAN_FRONTEND=noninteractive
apt-get "$@" update
apt-get "$@" install -y --no-install-recommends {packages}
apt-get "$@" clean
rm -rf /etc/apt/remote-build.list /var/lib/apt/lists/*
set --
"""


def derived_recipe(
    base: Base, pip: Sequence[str] = (), apt: Sequence[str] = (), files: Sequence[str] = ()
) -> str:
    """The recipe of a derived build (``files`` as ``SRC:DEST``); its ``%labels`` say what went in."""
    lines = [
        "# generated by remote (remote build --from ...)",
        f"Bootstrap: {base.bootstrap}",
        f"From: {base.ref}",
    ]
    if files:
        lines += ["", "%files", *(f"    {src} {dest}" for src, dest in map(split_file, files))]
    post = post_preamble()
    if apt:
        post += APT_POST.replace("{packages}", " ".join(map(shlex.quote, apt)))
    if pip:
        post += f"pip install {' '.join(map(shlex.quote, pip))}\n"
    lines += ["", "%post", *(f"    {line}" if line else "" for line in post.splitlines())]
    labels = {
        "remote.base": base.source,
        "remote.base.sha256": base.sha256,
        "remote.pip": " ".join(pip),
        "remote.apt": " ".join(apt),
        "remote.files": " ".join(files),
        "remote.built-by": built_by(),
    }
    lines += ["", *label_section(labels)]
    return "\n".join(lines) + "\n"


def label_section(labels: Mapping[str, str | None]) -> list[str]:
    """A ``%labels`` section of the labels that have a value."""
    return ["%labels", *(f"    {k} {' '.join(v.split())}" for k, v in labels.items() if v)]


def built_by() -> str:
    """``remote <version>``, for the ``remote.built-by`` label."""
    try:
        return f"remote {importlib.metadata.version('remote')}"
    except importlib.metadata.PackageNotFoundError:
        return "remote"


def build_recipe_text(
    text: str,
    identity: Sequence[object],
    source: str,
    name: str,
    inputs: Mapping[str, Path] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> cache.CachedImage:
    """Build a generated recipe into the cache, once for the same ``identity`` (JSON: what the
    image is made of, not where its files lie) and ``inputs`` (the files it copies in, by name,
    size and mtime), and copy it to ``out`` if given. ``source`` names it in the cache index (a
    ``#<key>`` is appended). The build sees the host's pip settings, its pip and the Debian
    mirror, bound read-only at ``/mnt`` (see :func:`post_preamble`)."""
    digest = hashlib.sha256(json.dumps([*identity, built_by()], sort_keys=True, default=str).encode())
    digest.update(cache.fingerprint(dict(inputs or {})).encode())
    key = digest.hexdigest()[:16]

    def make(output: Path) -> None:
        stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=cache.staging_dir()))
        try:
            mnt = stage / "mnt"
            mnt.mkdir()
            stage_pip_settings(mnt, host_pip_settings())
            mirror = debian_mirror()
            if mirror:
                (mnt / "apt-mirror").write_text(mirror + "\n")
            binds = [f"{mnt}:/mnt:ro"]
            pip = host_pip()
            if pip:
                (mnt / "pip-wheel" / "pip").mkdir(parents=True)
                binds.append(f"{pip[0]}:/mnt/pip-wheel/pip:ro")
            os.chmod(stage, 0o755)
            recipe = stage / f"{name}.def"
            recipe.write_text(text)
            build_command(recipe, {}, binds, f"building {name} ({source})")(output)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    entry = produce(f"{source}#{key}", name, make)
    if out is not None:
        copy_out(Path(entry.path), Path(out))
    return entry


def copy_out(image: Path, out: Path) -> None:
    """Copy the cached ``image`` to ``out``, all at once (a temporary file renamed)."""
    out = out.expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        shutil.copyfile(image, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


def build_derived(
    base: str | os.PathLike[str],
    pip: Sequence[str] = (),
    apt: Sequence[str] = (),
    files: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
) -> cache.CachedImage:
    """Build an image from ``base`` with pip packages, Debian/Ubuntu packages and files added.

    Rootless: as root a plain ``apptainer build``, otherwise ``--fakeroot``. The image is stored
    in the cache by sha256 (the same inputs are built once) and copied to ``out`` if given.

    Args:
        base: a ``.sif`` or sandbox folder, a ``.def`` recipe, or a ``docker://``, ``oras://`` or
            ``library://`` reference (a reference is cached as written: a tag that moves is not
            followed; pin ``@sha256:...``).
        pip: requirements for ``pip install`` (``"tabulate"``, ``"numpy>=2"``).
        apt: packages for ``apt-get install`` (Debian from the host's mirror, or Ubuntu).
        files: ``SRC:DEST`` pairs copied into the image (DEST absolute).
        out: also copy the image here.

    Raises:
        ImageBuildError: the build failed (the message says why: a refused ``--fakeroot``, no pip).
        ImageNotFound: no base at the path. ValueError: a bad ``files`` pair or base.
    """
    if not (pip or apt or files):
        raise ValueError("nothing to add: give pip packages, apt packages or files")
    pairs = [split_file(f) for f in files]  # before the base: a .def base takes a build
    found = resolve_base(base)
    inputs = {dest: src for src, dest in pairs}
    if found.bootstrap == "localimage" and found.sha256 is None:
        inputs["<base>"] = Path(found.ref)  # a sandbox folder: follow its files
    post = [post_preamble(), APT_POST if apt else ""]
    identity = ["derive", found.sha256 or found.ref, list(pip), list(apt), [d for _, d in pairs], post]
    name = Path(out).stem if out is not None else f"{found.name.removesuffix('.sif')}-derived"
    text = derived_recipe(found, pip, apt, files)
    return build_recipe_text(text, identity, f"derive:{found.sha256 or found.ref}", name, inputs, out)


#: Linux capability names by number, for APPTAINER_DROP_CAPS.
_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)


def _build_env() -> dict[str, str]:
    """The environment for ``apptainer build``. As root, ``APPTAINER_DROP_CAPS`` names the
    capabilities missing from this process's bounding set: apptainer asks for all of them for
    ``%post`` and fails where root lacks some (containers, some VMs)."""
    env = dict(os.environ)
    if os.geteuid() != 0 or env.get("APPTAINER_DROP_CAPS"):
        return env
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return env
    found = re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.MULTILINE)
    bounding = int(found.group(1), 16) if found else -1
    missing = [f"CAP_{n}" for i, n in enumerate(_CAPABILITIES) if not bounding >> i & 1]
    if missing:
        env["APPTAINER_DROP_CAPS"] = ",".join(missing)
    return env
