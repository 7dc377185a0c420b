"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; MIT licence) as normalised torch tensors.

Where the files come from, in order:
  1. `data_dir` (default `$LRFREE_DATA_DIR` or `~/.cache/lrfree/fashion-mnist`),
  2. the Debian package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist/`),
  3. a download from the dataset's GitHub repository into `data_dir`.

Two kinds of checksum, because the gzip wrapper is not stable: Debian re-compressed the
files (their .gz MD5s differ from the README's), but the decompressed idx bytes are the same.
Downloads are checked against the official .gz MD5s (zalandoresearch/fashion-mnist README);
every source is then checked against the SHA-256 of the decompressed idx payload.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from lrfree.bench.data.download import ChecksumError, DownloadError, fetch

APT_PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
URL_BASE = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# MD5 of the .gz files as published upstream (README, "Get the Data").
GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# SHA-256 of the decompressed idx bytes, computed from the Debian files; the same values are
# recorded by independent projects that download the official archives.
RAW_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Per-pixel statistics of the training images (scaled to [0, 1]).
MEAN, STD = 0.2860, 0.3530
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class DatasetUnavailable(RuntimeError):
    """Fashion-MNIST is neither on disk nor downloadable."""


def default_data_dir() -> Path:
    return Path(os.environ.get("LRFREE_DATA_DIR", Path.home() / ".cache" / "lrfree")) / (
        "fashion-mnist"
    )


def read_idx(raw: bytes) -> torch.Tensor:
    """Parse an idx file of unsigned bytes: magic 0,0,0x08,ndim; ndim big-endian int32 dims."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError("not an idx file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = 1
    for dim in dims:
        count *= dim
    if len(raw) - offset != count:
        raise ValueError(f"idx header says {dims} but holds {len(raw) - offset} bytes")
    return torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8).reshape(dims)


def _unavailable_message(data_dir: Path, cause: Exception) -> str:
    return (
        f"Fashion-MNIST not found in {data_dir} or {SYSTEM_DIR}, and downloading it failed "
        f"({cause}).\nGet it one of these ways:\n"
        f"  - install the Debian package: apt-get install {APT_PACKAGE}\n"
        f"  - put {', '.join(GZ_MD5)} in a folder and pass --data-dir FOLDER "
        f"(or set LRFREE_DATA_DIR)\n"
        f"  - download them from {URL_BASE}"
    )


def _locate(name: str, data_dir: Path) -> Path:
    for folder in (data_dir, SYSTEM_DIR):
        if (folder / name).is_file():
            return folder / name
    try:
        return fetch(URL_BASE + name, data_dir / name, md5=GZ_MD5[name])
    except (DownloadError, OSError) as exc:
        raise DatasetUnavailable(_unavailable_message(data_dir, exc)) from exc


def _read_verified(path: Path) -> torch.Tensor:
    raw = gzip.decompress(path.read_bytes())
    if hashlib.sha256(raw).hexdigest() != RAW_SHA256[path.name]:
        raise ChecksumError(
            f"{path} does not decompress to the official Fashion-MNIST {path.name}; "
            "delete it to re-fetch"
        )
    return read_idx(raw)


def load_raw(
    split: str, data_dir: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 28, 28) and int64 labels (N,) of `split` ("train"/"test").

    Cached per process (the suite runs many optimizers on the same data); callers must not
    modify the returned tensors in place.
    """
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    return _load_raw(split, str(folder.resolve()))


@functools.lru_cache(maxsize=4)
def _load_raw(split: str, folder: str) -> tuple[torch.Tensor, torch.Tensor]:
    image_file, label_file = FILES[split]
    images = _read_verified(_locate(image_file, Path(folder)))
    labels = _read_verified(_locate(label_file, Path(folder))).long()
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def load_fashion_mnist(
    split: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    subset: int | None = None,
    pad_to: int | None = None,
    channels: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images (N, channels, S, S) standardised with the training mean/std, and labels.

    Args:
        split: "train" or "test".
        data_dir: where to look first and where a download goes.
        subset: keep the first `subset` examples; the files are already in random order,
            so this is a fixed random subset, the same for every run.
        pad_to: zero-pad (black border) the 28x28 images to `pad_to` x `pad_to`, e.g. 32 for
            CIFAR-shaped models.
        channels: repeat the gray channel, e.g. 3 for models built for RGB.
    """
    images, labels = load_raw(split, data_dir)
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    x = images.unsqueeze(1).float().div_(255.0)
    if pad_to is not None and pad_to > x.shape[-1]:
        total = pad_to - x.shape[-1]
        x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    x = (x - MEAN) / STD
    if channels > 1:
        x = x.expand(-1, channels, -1, -1).contiguous()
    return x, labels.clone()
