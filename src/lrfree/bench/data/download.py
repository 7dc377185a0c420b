"""Fetch a file over HTTP(S) once, verify it, and never leave a half-written copy behind.

Every dataset loader in the benchmark goes through `fetch`, so the guarantees live in one
place: a checksum is mandatory, the file appears at `dest` only after it matched (written to a
temporary file in the same directory, then renamed), and an existing file that already matches
is reused without touching the network.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The file could not be fetched (no network, HTTP error, timeout)."""


class ChecksumError(RuntimeError):
    """A file's digest differs from the expected one."""


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks so large files need little memory."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    expected = {name: value.lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}
    if not expected:
        raise ValueError("fetch/verify need a sha256 or md5 checksum to check the file against")
    return expected


def _mismatches(digests: dict[str, str], expected: dict[str, str]) -> list[str]:
    return [
        f"{name}: expected {want}, got {digests[name]}"
        for name, want in expected.items()
        if digests[name] != want
    ]


def verify(
    path: str | os.PathLike[str], *, sha256: str | None = None, md5: str | None = None
) -> None:
    """Raise `ChecksumError` unless `path` has every given digest."""
    expected = _expected(sha256, md5)
    digests = {name: file_digest(path, name) for name in expected}
    problems = _mismatches(digests, expected)
    if problems:
        raise ChecksumError(f"checksum mismatch for {path}: " + "; ".join(problems))


def fetch(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download `url` to `dest` unless a verified copy is already there; return `dest`.

    At least one of `sha256`/`md5` is required. The body is hashed while it streams into a
    temporary file next to `dest`; only a matching file is renamed into place (atomic on
    POSIX), so readers never see a partial or corrupt `dest`.

    Raises:
        DownloadError: the server could not be reached or answered with an error.
        ChecksumError: the downloaded bytes do not match; nothing is left on disk.
    """
    expected = _expected(sha256, md5)
    dest = Path(dest)
    if dest.exists():
        try:
            verify(dest, sha256=sha256, md5=md5)
            return dest
        except ChecksumError:
            pass  # a stale or corrupt copy: download afresh and replace it
    dest.parent.mkdir(parents=True, exist_ok=True)
    hashers = {name: hashlib.new(name) for name in expected}
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        for hasher in hashers.values():
                            hasher.update(chunk)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                raise DownloadError(f"could not download {url}: {exc}") from exc
        problems = _mismatches({k: h.hexdigest() for k, h in hashers.items()}, expected)
        if problems:
            raise ChecksumError(
                f"checksum mismatch for {url} (not saved to {dest}): " + "; ".join(problems)
            )
        os.replace(tmp_name, dest)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return dest
