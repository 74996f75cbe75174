"""Building an image from a Dockerfile: spython converts it to an Apptainer recipe, then it is built
like a derived image (:func:`remote.images.build.build_recipe_text`), rootless and cached.

What becomes what:

- ``FROM x.sif``, ``x.def`` or a folder (relative to the context) → ``Bootstrap: localimage``;
  ``FROM name:tag`` or ``docker://``, ``oras://``, ``library://`` → that registry's bootstrap.
- ``RUN``, ``ARG``, ``ENV``, ``WORKDIR`` → ``%post``, in order (``ENV`` also ``%environment``).
- ``COPY``/``ADD`` of local files → ``%files`` (Apptainer copies them before ``%post`` runs).
- ``CMD``, ``ENTRYPOINT`` → ``%runscript`` (arguments replace CMD, as in Docker).
- ``LABEL``, ``MAINTAINER`` → ``%labels``, with ``remote.base``, ``remote.dockerfile`` and their sha256.
- ``EXPOSE``, ``VOLUME``, ``STOPSIGNAL``, ``HEALTHCHECK``, ``USER``, ``COPY --chown/--chmod``: left
  out, each named in a warning (they mean nothing to Apptainer, which runs as the user who starts
  it, on the host's network).
- Multi-stage builds, ``COPY --from``, ``SHELL``, ``ONBUILD``, ``RUN --mount``, heredocs, ``ADD`` of
  URLs or archives: an :class:`~remote.ImageBuildError` naming each, with its line.

``RUN pip install x`` works in a base without pip: ``pip``, ``pip3`` and ``python3 -m pip`` run the
host's pure-Python pip with the host's pip settings (see :func:`remote.images.build.post_preamble`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spython.logger import bot
from spython.main.parse.parsers import DockerParser
from spython.main.parse.writers import SingularityWriter

from ..errors import ImageBuildError
from . import cache
from .build import (
    REGISTRY_BOOTSTRAPS,
    Base,
    build_recipe_text,
    built_by,
    label_section,
    post_preamble,
    resolve_base,
)

#: Instructions with no meaning in Apptainer: left out, with a warning that says why.
IGNORED = {
    "EXPOSE": "an Apptainer container shares the host's network: there are no ports to publish",
    "VOLUME": "bind host folders when the container starts instead",
    "STOPSIGNAL": "remote stops its containers itself",
    "HEALTHCHECK": "Apptainer has no health checks (remote checks its server itself)",
    "USER": "an Apptainer container runs as the user who starts it; RUN steps run as (fake) root",
}

#: Instructions spython converts (after the rewriting below).
CONVERTED = {
    "FROM",
    "RUN",
    "ENV",
    "ARG",
    "COPY",
    "ADD",
    "WORKDIR",
    "CMD",
    "ENTRYPOINT",
    "LABEL",
    "MAINTAINER",
}

ARCHIVE = re.compile(r"\.(tar|tgz|tbz2?|txz|tar\.\w+|gz|bz2|xz|zst)$")


@dataclass
class Conversion:
    """A Dockerfile as an Apptainer recipe."""

    text: str  #: the recipe
    base: Base  #: what it starts from
    warnings: list[str] = field(default_factory=list)  #: what was left out or changed, by line
    inputs: dict[str, Path] = field(default_factory=dict)  #: the files it copies in, by destination
    context: Path = Path(".")  #: the folder COPY sources are relative to


def instructions(text: str) -> list[tuple[int, str, str]]:
    """The Dockerfile's instructions as (line, KEYWORD, arguments), continuation lines joined."""
    found, parts, start = [], [], 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments and blank lines, also inside a continued instruction (as Docker)
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        keyword, _, rest = " ".join(p for p in parts if p).partition(" ")
        found.append((start, keyword.upper(), rest.strip()))
        parts = []
    if parts:
        keyword, _, rest = " ".join(parts).partition(" ")
        found.append((start, keyword.upper(), rest.strip()))
    return found


def _flags(rest: str) -> tuple[dict[str, str], str]:
    """Leading ``--name[=value]`` flags of an instruction, and what follows them."""
    flags = {}
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        flags[name] = value
        rest = rest.lstrip()
    return flags, rest


def _words(rest: str) -> list[str]:
    """The arguments of an instruction: its JSON (exec) form, or shell-like words."""
    if rest.startswith("["):
        try:
            parsed = json.loads(rest)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
            return parsed
    return shlex.split(rest)


def convert(
    dockerfile: str | os.PathLike[str],
    context: str | os.PathLike[str] | None = None,
    build_args: Mapping[str, str] | None = None,
) -> Conversion:
    """Convert a Dockerfile to an Apptainer recipe with spython, naming what does not convert.

    Args:
        dockerfile: the Dockerfile.
        context: the folder COPY/ADD sources and a local FROM path are relative to (default: the
            Dockerfile's folder).
        build_args: values for its ``ARG`` s (else their defaults).

    Raises:
        ImageBuildError: it uses what Apptainer cannot do (each instruction named with its line).
        ImageNotFound: a local FROM image is missing.
    """
    path = Path(dockerfile).expanduser().resolve()
    where = Path(context).expanduser().resolve() if context is not None else path.parent
    text = path.read_text()
    args = dict(build_args or {})
    if re.match(r"(?i)\s*#\s*escape\s*=\s*[^\\\s]", text):
        raise ImageBuildError(f"{path}: an escape directive other than \\ is not supported")
    kept: list[str] = []
    notes: list[str] = []
    errors: list[str] = []
    labels: dict[str, str] = {}
    inputs: dict[str, Path] = {}
    exported: set[str] = set()
    run: dict[str, str | list[str]] = {}
    values: dict[str, str] = {}  # the ARGs so far
    workdir, froms = "/", 0
    for line, keyword, rest in instructions(text):
        at = f"line {line}: {keyword}"
        if keyword in IGNORED:
            notes.append(f"{at} left out: {IGNORED[keyword]}")
            continue
        if keyword not in CONVERTED:
            errors.append(f"{at} is not supported (Apptainer has no equivalent)")
            continue
        flags, rest = _flags(rest)
        if keyword == "FROM":
            froms += 1
            if froms > 1:
                errors.append(f"{at}: a multi-stage build; build each stage on its own (FROM the .sif)")
            if "platform" in flags:
                notes.append(f"{at} --platform left out: the image is built for this machine")
            kept.append(f"FROM {rest}")
        elif keyword == "RUN":
            if flags:
                errors.append(f"{at} --{' --'.join(flags)} is not supported")
            elif rest.startswith("<<"):
                errors.append(f"{at} with a heredoc is not supported; write the commands out")
            else:
                kept.append(f"RUN {shlex.join(_words(rest)) if rest.startswith('[') else rest}")
        elif keyword in ("COPY", "ADD"):
            if "from" in flags:
                errors.append(f"{at} --from={flags['from']}: multi-stage copies are not supported")
                continue
            for name in flags:
                if name in ("chown", "chmod", "link"):
                    notes.append(f"{at} --{name} left out: the files belong to whoever runs the image")
                else:
                    errors.append(f"{at} --{name} is not supported")
            words = _words(rest)
            if len(words) < 2:
                errors.append(f"{at} needs a source and a destination")
                continue
            *sources, dest = words
            is_dir = len(sources) > 1 or dest.endswith("/") or dest in (".", "..")
            dest = os.path.normpath(os.path.join(workdir, dest))
            for source in sources:
                if keyword == "ADD" and re.match(r"^[a-z]+://", source):
                    errors.append(f"{at} of a URL ({source}) is not supported; download it in a RUN step")
                    continue
                if keyword == "ADD" and ARCHIVE.search(source):
                    errors.append(f"{at} of an archive ({source}) is not supported (Docker unpacks it)")
                    continue
                src = (where / source).resolve()
                if not src.exists() and not any(c in source for c in "*?["):
                    errors.append(f"{at}: {source} is not in the context {where}")
                    continue
                if any(c.isspace() for c in str(src) + dest):
                    errors.append(f"{at}: apptainer's %files takes no whitespace in paths")
                    continue
                # as Docker: a folder's contents go to dest (cp -r src/. dest); a file into dest/
                target = dest.rstrip("/") + "/" if is_dir and not src.is_dir() else dest
                kept.append(f"COPY {src}{'/.' if src.is_dir() else ''} {target}")
                inputs[f"{len(inputs)}:{target}"] = src
        elif keyword in ("LABEL", "MAINTAINER"):
            pairs = [("maintainer", rest)] if keyword == "MAINTAINER" else _label_pairs(rest)
            labels.update(pairs)
        elif keyword == "ARG":
            name, sep, default = rest.partition("=")
            # a build arg wins; an ARG without a default keeps an earlier one (ARG X before FROM)
            value = args[name] if name in args else default if sep else values.get(name, "")
            values[name] = value
            kept.append(f"ARG {name}={shlex.quote(value) if value else ''}")
            if froms:  # an ARG before FROM is for FROM only
                exported.add(name)
        elif keyword == "ENV":
            kept.append(f"ENV {rest}")
        elif keyword in ("CMD", "ENTRYPOINT"):
            run[keyword] = _words(rest) if rest.startswith("[") else rest
        elif keyword == "WORKDIR":
            workdir = rest if rest.startswith("/") else os.path.join(workdir, rest)
            kept.append(f"WORKDIR {workdir}")
    if not froms:
        errors.append("no FROM line")
    if set(args) - set(values):
        notes.append(
            f"build args the Dockerfile has no ARG for: {', '.join(sorted(set(args) - set(values)))}"
        )
    if errors:
        raise ImageBuildError(
            f"{path} cannot be converted to an Apptainer recipe:\n  " + "\n  ".join(errors + notes)
        )
    layers = _parse("\n".join(kept) + "\n")
    (recipe,) = layers.values()
    base = _base(recipe.fromHeader, where)
    for pair in recipe.environ:
        exported.add(pair.partition("=")[0])
    recipe.install = [
        *post_preamble(strict=False).splitlines(),
        *(f"export {item}" if _assigns(item, exported) else item for item in recipe.install),
    ]
    digest = hashlib.sha256(text.encode()).hexdigest()
    labels.update(
        {
            "remote.base": recipe.fromHeader.strip(),
            "remote.base.sha256": base.sha256 or "",
            "remote.dockerfile": path.name,
            "remote.dockerfile.sha256": digest,
            "remote.built-by": built_by(),
        }
    )
    written = SingularityWriter(layers).convert(force=False)
    header = re.match(r"Bootstrap: docker\nFrom: .*\nStage: .*\n", written)
    if header is None or "%runscript" not in written:  # not what spython writes: do not guess
        raise ImageBuildError(f"converting {path}: unexpected spython output:\n{written[:500]}")
    body = written[header.end() : written.index("%runscript")].strip("\n")
    lines = [
        f"# generated by remote from {path.name}",
        f"Bootstrap: {base.bootstrap}",
        f"From: {base.ref}",
        "",
    ]
    lines += [body, "", *_runscript(run, workdir), *label_section(labels)]
    return Conversion("\n".join(lines) + "\n", base, notes, inputs, where)


def _runscript(run: Mapping[str, str | list[str]], workdir: str) -> list[str]:
    """A ``%runscript`` that runs ENTRYPOINT and CMD as Docker would (arguments replace CMD); none
    without them (the base's stays)."""
    if not run:
        return []

    def command(value: str | list[str]) -> str:
        return shlex.join(value) if isinstance(value, list) else f"/bin/sh -c {shlex.quote(value)}"

    entry, cmd = run.get("ENTRYPOINT"), run.get("CMD")
    lines = ["%runscript"] + ([f"    cd {shlex.quote(workdir)}"] if workdir != "/" else [])
    if isinstance(entry, str):  # the shell form ignores CMD and arguments
        return [*lines, f"    exec {command(entry)}", ""]
    prefix = f"{shlex.join(entry)} " if entry else ""
    lines.append(f'    if [ "$#" -gt 0 ]; then exec {prefix}"$@"; fi')
    lines.append(f"    exec {prefix}{command(cmd) if cmd is not None else ''}".rstrip())
    return [*lines, ""]


def _label_pairs(rest: str) -> list[tuple[str, str]]:
    """``LABEL a=b "c d"="e f"`` → [(a, b), (c d, e f)] (the old ``LABEL key value`` too)."""
    words = shlex.split(rest)
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    return [(k.replace(" ", "_"), v) for k, _, v in (w.partition("=") for w in words)]


def _assigns(item: str, names: set[str]) -> bool:
    """Whether a ``%post`` line is a ``NAME=value`` of an ENV or ARG (then it is exported)."""
    name, sep, _ = item.partition("=")
    return bool(sep) and name in names


def _parse(text: str) -> dict[str, Any]:
    """spython's recipe (one layer: stage name → Recipe) of a rewritten, single-stage Dockerfile."""
    fd, name = tempfile.mkstemp(prefix=".Dockerfile-", dir=cache.staging_dir())
    with os.fdopen(fd, "w") as f:
        f.write(text)
    level = bot.level
    bot.level = -3  # errors only: what it would warn about was named above
    try:
        layers = DockerParser(name).recipe
    finally:
        bot.level = level
        Path(name).unlink(missing_ok=True)
    return layers


def _base(header: str | None, context: Path) -> Base:
    """The Base of a FROM: a local image (a path, or a name that is a file in the context), else a
    registry reference (a plain ``name:tag`` is Docker's)."""
    if not header or header.strip() == "scratch":
        raise ImageBuildError(f"FROM {header or ''}: an empty base cannot run Python; start from an image")
    header = header.strip()
    if header.startswith(tuple(REGISTRY_BOOTSTRAPS)):
        return resolve_base(header)
    local = header.startswith(("/", "./", "../", "~")) or header.endswith((".sif", ".def"))
    if local or (context / header).exists():
        return resolve_base(header, relative_to=context)
    return resolve_base(f"docker://{header}")


def build_dockerfile(
    dockerfile: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    context: str | os.PathLike[str] | None = None,
    build_args: Mapping[str, str] | None = None,
) -> cache.CachedImage:
    """Build a Dockerfile into the cache (rootless, once for the same inputs), and copy it to ``out``.

    What the conversion leaves out is named in a :class:`UserWarning` each (see :func:`convert`).

    Raises:
        ImageBuildError: it cannot be converted, or the build failed (the message says why).
    """
    done = convert(dockerfile, context, build_args)
    for note in done.warnings:
        warnings.warn(f"{Path(dockerfile).name} {note}", UserWarning, stacklevel=2)
    base = done.base
    anonymous = done.text.replace(base.ref, "<base>").replace(str(done.context), "<context>")
    identity = ["dockerfile", base.sha256 or base.ref, anonymous]
    name = Path(out).stem if out is not None else done.context.name or "dockerfile"
    return build_recipe_text(
        done.text, identity, f"dockerfile:{base.sha256 or base.ref}", name, done.inputs, out
    )
