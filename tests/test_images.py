"""Image sources and the shared cache: https downloads (verified, locked, resumable), pulls,
recipe builds, remote.images, and a cache that cannot be written."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest
from https_server import ImageServer

import remote
from remote.images import cache
from remote.images.build import recipe_key

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("REMOTE_CACHE", str(root))
    return root


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = ImageServer(tmp_path)
    monkeypatch.setenv("REMOTE_CA_BUNDLE", str(srv.ca_bundle))
    yield srv
    srv.close()


def stored(root: Path) -> list[str]:
    """Every file in the store folder, temporary ones included."""
    folder = root / "images" / "sha256"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- acceptance 1: 16 processes, one download ----------------------------------------------------

RESOLVE = """
import os, sys, time
import remote
while not os.path.exists(sys.argv[3]):  # start together
    time.sleep(0.01)
print(remote.resolve_image(sys.argv[1], sha256=sys.argv[2]).path)
"""


def test_sixteen_processes_download_once(tmp_path, cache_root, server):
    data = os.urandom(3 << 20)
    server.files["/bench.sif"] = data
    server.delay = 0.02  # ~1 s transfer: the others arrive while it runs
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RESOLVE, server.url("/bench.sif"), sha(data), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(16)
    ]
    time.sleep(1.5)  # let them import
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, [err for _, err in results]
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    (path,) = paths
    assert server.gets("/bench.sif") == 1
    assert Path(path).read_bytes() == data
    assert Path(path).name == f"{sha(data)}.sif"
    assert stored(cache_root) == [f"{sha(data)}.sif"]  # no temporary file left
    (entry,) = remote.images.list()
    assert (entry.sha256, entry.size, entry.source) == (sha(data), len(data), server.url("/bench.sif"))


# -- acceptance 2: truncated transfer and wrong checksum -----------------------------------------


def test_truncated_download_raises_download_error_then_retry_succeeds(cache_root, server):
    data = os.urandom(1 << 20)
    server.files["/cut.sif"] = data
    server.truncate = -1  # every response cut short
    url = server.url("/cut.sif")
    with pytest.raises(remote.DownloadError, match="failed after 4 attempts") as info:
        remote.resolve_image(url, sha256=sha(data))
    assert not isinstance(info.value, remote.ChecksumMismatch)
    assert server.gets("/cut.sif") == 4
    assert stored(cache_root) == []
    server.truncate = 0
    image = remote.resolve_image(url, sha256=sha(data))
    assert Path(image.path).read_bytes() == data
    assert stored(cache_root) == [f"{sha(data)}.sif"]


def test_broken_transfer_resumes_with_a_range_request(cache_root, server):
    data = os.urandom(1 << 20)
    server.files["/resume.sif"] = data
    server.truncate = 1  # the first response only
    image = remote.resolve_image(server.url("/resume.sif") + f"#sha256={sha(data)}")
    assert Path(image.path).read_bytes() == data
    ranges = [r for _, p, r in server.requests if p == "/resume.sif"]
    assert len(ranges) == 2 and ranges[0] is None
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert len(data) // 4 < resumed_at <= len(data) // 2  # most of the first half was kept


def test_wrong_checksum_raises_checksum_mismatch_and_stores_nothing(cache_root, server):
    data = os.urandom(1 << 20)
    server.files["/img.sif"] = data
    url = server.url("/img.sif")
    with pytest.raises(remote.ChecksumMismatch, match=sha(data)) as info:
        remote.resolve_image(url, sha256=sha(b"another image"))
    assert not isinstance(info.value, remote.DownloadError)
    assert stored(cache_root) == []
    assert not cache.image_path(sha(b"another image")).exists()
    image = remote.resolve_image(url, sha256=sha(data))  # retry with the right digest
    assert Path(image.path).read_bytes() == data


def test_published_checksum_file_is_used(cache_root, server):
    data = os.urandom(4096)
    server.files["/pub.sif"] = data
    server.files["/pub.sif.sha256"] = f"{sha(data)}  pub.sif\n".encode()
    image = remote.resolve_image(server.url("/pub.sif"))
    assert image.sha256 == sha(data)
    del server.files["/pub.sif.sha256"]
    with pytest.raises(remote.DownloadError, match="sha256="):
        remote.resolve_image(server.url("/other.sif"))


def test_missing_url_is_image_not_found(cache_root, server):
    with pytest.raises(remote.ImageNotFound, match="404"):
        remote.resolve_image(server.url("/nothing.sif"), sha256=sha(b"x"))


def test_untrusted_certificate_is_refused(cache_root, server, monkeypatch):
    monkeypatch.delenv("REMOTE_CA_BUNDLE")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "")
    server.files["/a.sif"] = b"a"
    with pytest.raises(remote.DownloadError, match="REMOTE_CA_BUNDLE"):
        remote.resolve_image(server.url("/a.sif"), sha256=sha(b"a"))
    assert stored(cache_root) == []


def test_progress_is_drawn_on_a_terminal_only(tmp_path, cache_root, server):
    data = os.urandom(1 << 20)
    server.files["/p.sif"] = data
    code = "import sys, remote; remote.resolve_image(sys.argv[1], sha256=sys.argv[2])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def stderr_of(url: str, terminal: bool) -> str:
        if not terminal:
            done = subprocess.run([sys.executable, "-c", code, url, sha(data)], capture_output=True, env=env)
            assert done.returncode == 0, done.stderr
            return done.stderr.decode()
        primary, secondary = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-c", code, url, sha(data)], stderr=secondary, env=env)
        os.close(secondary)
        output = b""
        with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
            while chunk := os.read(primary, 4096):
                output += chunk
        os.close(primary)
        assert proc.wait() == 0, output
        return output.decode(errors="replace")

    assert stderr_of(server.url("/p.sif"), terminal=False) == ""
    remote.images.remove("p.sif")
    shown = stderr_of(server.url("/p.sif"), terminal=True)
    assert "remote: downloading p.sif" in shown and "100%" in shown


# -- remote.images ----------------------------------------------------------------------------------


def test_images_list_remove_prune(cache_root, server):
    blobs = {f"/{n}.sif": os.urandom(1000 * (i + 1)) for i, n in enumerate(["a", "b", "c"])}
    server.files.update(blobs)
    for path, data in blobs.items():
        remote.resolve_image(server.url(path), sha256=sha(data))
        time.sleep(0.01)
    listed = remote.images.list()
    assert [e.name for e in listed] == ["c.sif", "b.sif", "a.sif"]  # most recent first
    assert [e.size for e in listed] == [3000, 2000, 1000]
    remote.resolve_image(server.url("/a.sif"), sha256=sha(blobs["/a.sif"]))  # a: used again
    assert remote.images.list()[0].name == "a.sif"

    pruned = remote.images.prune(max_size=4000)  # keeps a (1000) + c (3000), drops b
    assert [e.name for e in pruned] == ["b.sif"]
    assert not Path(pruned[0].path).exists()
    removed = remote.images.remove(sha(blobs["/c.sif"])[:12])
    assert [e.name for e in removed] == ["c.sif"] and not Path(removed[0].path).exists()
    with pytest.raises(KeyError):
        remote.images.remove("c.sif")
    assert remote.images.prune(older_than=3600) == []
    assert [e.name for e in remote.images.prune(older_than=0)] == ["a.sif"]
    assert remote.images.list() == [] and stored(cache_root) == []


# -- acceptance 5: a cache that cannot be written ----------------------------------------------------


@pytest.fixture
def mount_tmpfs(tmp_path):
    """Mount a small tmpfs (root only); unmounted afterwards."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI=true: the full/read-only cache tests need root to mount a tmpfs")
        pytest.skip(reason="mounting a tmpfs needs root")
    mounted = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_read_only_cache_is_a_clear_error(mount_tmpfs, monkeypatch, server):
    point = mount_tmpfs("ro", "ro,size=1m")
    monkeypatch.setenv("REMOTE_CACHE", str(point / "remote"))
    with pytest.raises(remote.CacheError, match="REMOTE_CACHE") as info:
        remote.resolve_image(server.url("/x.sif"), sha256=sha(b"x"))
    assert str(point / "remote") in str(info.value) and "read-only" in str(info.value)
    with pytest.raises(remote.CacheError, match="REMOTE_CACHE"):
        cache.cache_dir()


def test_full_cache_is_a_clear_error(mount_tmpfs, monkeypatch, server):
    point = mount_tmpfs("full", "size=512k")
    monkeypatch.setenv("REMOTE_CACHE", str(point))
    data = os.urandom(1 << 20)
    server.files["/big.sif"] = data
    with pytest.raises(remote.CacheError, match="REMOTE_CACHE") as info:
        remote.resolve_image(server.url("/big.sif"), sha256=sha(data))
    assert str(point) in str(info.value) and "full" in str(info.value)
    assert stored(point) == []  # the partial download is gone, nothing under the final name


# -- acceptance 4: a pull and a build, run in CI ----------------------------------------------------


def test_pull_from_an_oci_archive(apptainer, tmp_path, cache_root):
    archive = tmp_path / "hello.oci.tar"
    write_oci_archive(archive, {"hello.txt": b"hello from an oci archive\n"})
    image = remote.resolve_image(f"oci-archive:{archive}")
    assert Path(image.path).name == f"{image.sha256}.sif"
    assert read_from_sif(apptainer, image.path, "hello.txt", tmp_path) == b"hello from an oci archive\n"
    again = remote.resolve_image(f"oci-archive:{archive}")  # from the cache, no second pull
    assert again == image and len(remote.images.list()) == 1
    with pytest.raises(remote.ImagePullError, match="pulling oci-archive"):
        remote.resolve_image(f"oci-archive:{tmp_path / 'missing.tar'}")
    with pytest.raises(remote.ChecksumMismatch):
        remote.resolve_image(f"oci-archive:{archive}", sha256=sha(b"else"))


def test_build_from_a_recipe_and_run_it(minimal_image, tmp_path, cache_root, monkeypatch):
    if os.geteuid() != 0 and not IN_CI:
        pytest.skip(reason="a localimage build as non-root needs --fakeroot set up for this user")
    (tmp_path / "note.txt").write_text("copied by %files\n")
    recipe = tmp_path / "tiny.def"
    recipe.write_text(
        f"Bootstrap: localimage\nFrom: {minimal_image}\n\n%files\n    note.txt /opt/note.txt\n\n"
        "%post\n    echo built > /opt/built.txt\n"
    )
    monkeypatch.chdir(tmp_path)  # %files paths are relative to the current directory
    with remote.RemoteRunner(str(recipe)) as runner:
        env = runner.make("CartPole-v1")
        env.reset(seed=0)
        assert env.step(0)[1] == 1.0
        assert runner.image_sha256 == cache.sha256_file(Path(runner.image))
    out = subprocess.run(
        ["apptainer", "exec", runner.image, "cat", "/opt/built.txt", "/opt/note.txt"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "built\ncopied by %files\n"
    (entry,) = remote.images.list()
    assert entry.name == "tiny" and entry.source.startswith(f"build:{recipe}#")
    assert remote.resolve_image(recipe).path == runner.image  # cached: not built again
    bad = tmp_path / "bad.def"
    bad.write_text(f"Bootstrap: localimage\nFrom: {tmp_path / 'no-such-base.sif'}\n")
    with pytest.raises(remote.ImageBuildError, match="building"):
        remote.resolve_image(bad)
    assert [e.name for e in remote.images.list()] == ["tiny"]


def test_recipe_key_follows_the_recipe_args_and_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.txt").write_text("v1")
    recipe = tmp_path / "r.def"
    recipe.write_text("Bootstrap: localimage\nFrom: {{ BASE }}\n%files\n    data.txt /data.txt\n")
    key = recipe_key(recipe, {"BASE": "a.sif"})
    assert recipe_key(recipe, {"BASE": "a.sif"}) == key
    assert recipe_key(recipe, {"BASE": "b.sif"}) != key
    (tmp_path / "data.txt").write_text("v2 longer")
    assert recipe_key(recipe, {"BASE": "a.sif"}) != key


# -- helpers ----------------------------------------------------------------------------------------


def write_oci_archive(path: Path, files: dict[str, bytes]) -> None:
    """A one-layer OCI image archive holding ``files`` (no registry needed)."""
    import gzip
    import io
    import json
    import tarfile

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for name, data in files.items():
            add(tar, name, data)
    raw = layer.getvalue()
    compressed = gzip.compress(raw, mtime=0)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha(raw)}"]},
    }
    config_bytes = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": f"sha256:{sha(config_bytes)}",
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": f"sha256:{sha(compressed)}",
                "size": len(compressed),
            }
        ],
    }
    manifest_bytes = json.dumps(manifest).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{sha(manifest_bytes)}",
                "size": len(manifest_bytes),
            }
        ],
    }
    with tarfile.open(path, "w") as tar:
        for folder in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for blob in (compressed, config_bytes, manifest_bytes):
            add(tar, f"blobs/sha256/{sha(blob)}", blob)
        add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add(tar, "index.json", json.dumps(index).encode())


def read_from_sif(apptainer: str, image: str, name: str, tmp_path: Path) -> bytes:
    """A file from a SIF's root file system (the image has no shell to ``cat`` it with)."""
    squashfs = tmp_path / "rootfs.squashfs"
    with open(squashfs, "wb") as out:
        subprocess.run([apptainer, "sif", "dump", "4", image], stdout=out, check=True)
    return subprocess.run(["unsquashfs", "-cat", str(squashfs), name], capture_output=True, check=True).stdout


def test_runner_on_a_read_only_cache_is_a_clear_error(mount_tmpfs, monkeypatch, image):
    point = mount_tmpfs("ro-runner", "ro,size=1m")
    monkeypatch.setenv("REMOTE_CACHE", str(point / "remote"))
    with pytest.raises(remote.CacheError, match="REMOTE_CACHE"):
        remote.RemoteRunner(image)
