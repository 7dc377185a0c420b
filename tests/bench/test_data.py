"""Data loading for the benchmark: downloads, Fashion-MNIST, generated shapes, augmentation."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lrfree.bench.data import fashion_mnist as fm
from lrfree.bench.data.augment import jitter_and_noise, random_crop_flip, random_resized_crop
from lrfree.bench.data.batches import batch_indices
from lrfree.bench.data.download import ChecksumError, DownloadError, fetch, verify
from lrfree.bench.data.shapes import NUM_CLASSES, generate_shapes

PAYLOAD = b"lrfree test payload\n" * 1000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving the folder it returns; yields (base URL, folder)."""
    root = tmp_path / "served"
    root.mkdir()
    (root / "file.bin").write_bytes(PAYLOAD)
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# --- download.py -----------------------------------------------------------------------------


def test_fetch_with_good_checksums(server, tmp_path):
    base, _ = server
    dest = tmp_path / "out" / "file.bin"
    sha, md5 = hashlib.sha256(PAYLOAD).hexdigest(), hashlib.md5(PAYLOAD).hexdigest()
    assert fetch(base + "file.bin", dest, sha256=sha, md5=md5) == dest
    assert dest.read_bytes() == PAYLOAD
    assert list(dest.parent.iterdir()) == [dest]


def test_fetch_bad_checksum_fails_and_leaves_nothing(server, tmp_path):
    base, _ = server
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(ChecksumError, match="checksum mismatch.*expected 0+, got"):
        fetch(base + "file.bin", dest, sha256="0" * 64)
    assert list(dest.parent.iterdir()) == []


def test_fetch_replaces_a_corrupt_copy_and_reuses_a_good_one(server, tmp_path):
    base, root = server
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"truncated")
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    fetch(base + "file.bin", dest, sha256=sha)
    assert dest.read_bytes() == PAYLOAD
    (root / "file.bin").unlink()  # a verified local copy must not need the server
    assert fetch(base + "file.bin", dest, sha256=sha) == dest


def test_fetch_needs_a_checksum_and_reports_network_errors(tmp_path):
    with pytest.raises(ValueError, match="checksum"):
        fetch(_closed_port_url() + "x", tmp_path / "x")
    with pytest.raises(DownloadError, match="could not download"):
        fetch(_closed_port_url() + "x", tmp_path / "x", md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_verify(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    verify(path, md5=hashlib.md5(PAYLOAD).hexdigest())
    with pytest.raises(ChecksumError):
        verify(path, md5="f" * 32)


# --- Fashion-MNIST ----------------------------------------------------------------------------

needs_fmnist = pytest.mark.skipif(
    not all((fm.SYSTEM_DIR / name).is_file() for name in fm.GZ_MD5),
    reason=f"apt-get install {fm.APT_PACKAGE}",
)


def test_read_idx():
    header = bytes([0, 0, 8, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert fm.read_idx(header + bytes(range(6))).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="holds"):
        fm.read_idx(header + bytes(5))
    with pytest.raises(ValueError, match="idx"):
        fm.read_idx(bytes([0, 0, 9, 1, 0, 0, 0, 0]))


@needs_fmnist
def test_load_test_split(tmp_path):
    x, y = fm.load_fashion_mnist("test", data_dir=tmp_path)
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and torch.equal(y.bincount(), torch.full((10,), 1000))
    raw, _ = fm.load_raw("test", tmp_path)
    assert torch.allclose(x[:, 0], (raw.float() / 255 - fm.MEAN) / fm.STD)
    small, y_small = fm.load_fashion_mnist(
        "test", data_dir=tmp_path, subset=50, pad_to=32, channels=3
    )
    assert small.shape == (50, 3, 32, 32) and torch.equal(y_small, y[:50])
    assert torch.equal(small[:, 1, 2:30, 2:30], x[:50, 0])
    assert torch.allclose(small[:, :, 0, 0], torch.tensor(-fm.MEAN / fm.STD))


@needs_fmnist
def test_data_dir_comes_first_and_is_verified(tmp_path):
    labels = "t10k-labels-idx1-ubyte.gz"
    for name in fm.FILES["test"]:
        shutil.copy(fm.SYSTEM_DIR / name, tmp_path / name)
    assert fm._locate(labels, tmp_path) == tmp_path / labels
    raw = gzip.decompress((tmp_path / labels).read_bytes())
    (tmp_path / labels).write_bytes(gzip.compress(raw[:-1] + bytes([(raw[-1] + 1) % 10])))
    with pytest.raises(ChecksumError, match="official Fashion-MNIST"):
        fm._read_verified(fm._locate(labels, tmp_path))


@needs_fmnist
def test_download_path(server, tmp_path, monkeypatch):
    """Missing locally: fetched from URL_BASE (here a local copy of the files), then verified."""
    base, root = server
    name = "t10k-labels-idx1-ubyte.gz"
    shutil.copy(fm.SYSTEM_DIR / name, root / name)
    # Debian re-gzipped the files, so their .gz MD5 differs from upstream's; serve theirs.
    monkeypatch.setattr(fm, "GZ_MD5", {name: hashlib.md5((root / name).read_bytes()).hexdigest()})
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(fm, "URL_BASE", base)
    target = tmp_path / "data"
    assert fm._locate(name, target) == target / name
    assert fm._read_verified(target / name).shape == (10_000,)


def test_missing_everywhere_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(fm, "URL_BASE", _closed_port_url())
    with pytest.raises(fm.DatasetUnavailable) as info:
        fm.load_raw("test", tmp_path / "empty")
    message = str(info.value)
    for hint in (f"apt-get install {fm.APT_PACKAGE}", "--data-dir", fm.URL_BASE):
        assert hint in message
    assert list((tmp_path / "empty").iterdir()) == []


# --- generated shapes, batches, augmentation ----------------------------------------------------


def test_shapes_are_deterministic_and_cover_all_classes():
    x, mask = generate_shapes.__wrapped__(64, seed=3)
    x2, mask2 = generate_shapes.__wrapped__(64, seed=3)
    assert torch.equal(x, x2) and torch.equal(mask, mask2)
    assert x.shape == (64, 1, 32, 32) and mask.shape == (64, 32, 32)
    assert set(mask.unique().tolist()) == set(range(NUM_CLASSES))
    assert not torch.equal(generate_shapes.__wrapped__(64, seed=4)[1], mask)
    # Every image holds at least one shape.
    assert bool((mask.flatten(1) > 0).any(1).all())


def test_batch_indices_are_epochs_of_permutations():
    stream = batch_indices(10, 3, torch.Generator().manual_seed(0))
    epoch = torch.cat([next(stream) for _ in range(3)])
    assert len(epoch.unique()) == 9
    with pytest.raises(ValueError):
        next(batch_indices(2, 3, torch.Generator()))


def test_random_crop_flip_matches_a_slicing_reference():
    x = torch.randn(6, 2, 5, 7)
    out = random_crop_flip(x, torch.Generator().manual_seed(1), pad=2)
    gen = torch.Generator().manual_seed(1)
    dy, dx = torch.randint(0, 5, (6,), generator=gen), torch.randint(0, 5, (6,), generator=gen)
    flipped = torch.rand(6, generator=gen) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(6):
        want = padded[i, :, dy[i] : dy[i] + 5, dx[i] : dx[i] + 7]
        assert torch.equal(out[i], want.flip(-1) if flipped[i] else want)
    same = random_crop_flip(x, torch.Generator(), pad=0, flip=False)
    assert torch.equal(same, x)


def test_resized_crop_of_whole_image_is_identity_and_jitter_is_seeded():
    x = torch.randn(4, 1, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = random_resized_crop(x, gen, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.allclose(out, x, atol=1e-5)
    a = jitter_and_noise(x, torch.Generator().manual_seed(5))
    b = jitter_and_noise(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, x)
