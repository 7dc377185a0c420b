"""WordNet 3.0 noun glosses labelled by lexicographer file: 82,115 texts in 26 classes.

Each synset line of `data.noun` reads

    offset lex_filenum ss_type w_cnt word lex_id ... | gloss

The class is `lex_filenum` (03 noun.Tops … 28 noun.time, here shifted to 0 … 25) and the
text is everything after "| ". The file opens with the licence, on lines that start with two
spaces; those are skipped.

Where `data.noun` comes from, in order:
  1. `data_dir` (default `$LRFREE_DATA_DIR/wordnet` or `~/.cache/lrfree/wordnet`),
  2. the Debian package `wordnet-base` (`/usr/share/wordnet/data.noun`),
  3. the official WordNet 3.0 tarball, downloaded into `data_dir` and checked against its
     SHA-256 (the value published by Spack's `wordnet` package and other independent
     projects; it could not be recomputed here, offline), then `dict/data.noun` is extracted.
"""

from __future__ import annotations

import functools
import os
import tarfile
import tempfile
from pathlib import Path

import torch

from lrfree.bench.data.download import DownloadError, fetch

APT_PACKAGE = "wordnet-base"
SYSTEM_FILE = Path("/usr/share/wordnet/data.noun")
TARBALL_URL = "https://wordnetcode.princeton.edu/3.0/WordNet-3.0.tar.gz"
TARBALL_SHA256 = "640db279c949a88f61f851dd54ebbb22d003f8b90b85267042ef85a3781d3a52"
TARBALL_MEMBER = "WordNet-3.0/dict/data.noun"
FIRST_LEXFILE = 3  # lexicographer files 00-02 are adjectives and adverbs
LEXNAMES = (
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
)


class DatasetUnavailable(RuntimeError):
    """WordNet's data.noun is neither on disk nor downloadable."""


def default_data_dir() -> Path:
    return Path(os.environ.get("LRFREE_DATA_DIR", Path.home() / ".cache" / "lrfree")) / "wordnet"


def parse_data_noun(path: str | os.PathLike[str]) -> tuple[list[str], list[int]]:
    """Glosses and class indices (lex_filenum − 3, in [0, 26)) of every synset in `path`."""
    glosses: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.startswith("  ") or not line.strip():
                continue
            head, sep, gloss = line.partition("| ")
            fields = head.split()
            if not sep or len(fields) < 2:
                raise ValueError(f"{path}:{number}: not a data.noun synset line")
            label = int(fields[1]) - FIRST_LEXFILE
            if not 0 <= label < len(LEXNAMES):
                raise ValueError(f"{path}:{number}: lex_filenum {fields[1]} is not a noun file")
            glosses.append(gloss.strip())
            labels.append(label)
    return glosses, labels


def _extract_data_noun(tarball: Path, dest: Path) -> Path:
    with tarfile.open(tarball, "r:gz") as archive:
        try:
            member = archive.extractfile(TARBALL_MEMBER)
        except KeyError:
            member = None
        if member is None:
            raise DatasetUnavailable(f"{tarball} holds no {TARBALL_MEMBER}")
        # Written beside `dest` and renamed, so an interrupted extraction leaves no partial file.
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".data.noun.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(member.read())
            os.replace(tmp, dest)
        except BaseException:
            os.unlink(tmp)
            raise
    return dest


def locate_data_noun(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of a `data.noun`: in `data_dir`, else the system copy, else downloaded."""
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    for candidate in (folder / "data.noun", SYSTEM_FILE):
        if candidate.is_file():
            return candidate
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tarball = fetch(TARBALL_URL, folder / "WordNet-3.0.tar.gz", sha256=TARBALL_SHA256)
        return _extract_data_noun(tarball, folder / "data.noun")
    except (DownloadError, OSError) as exc:
        raise DatasetUnavailable(
            f"WordNet data.noun not found in {folder} or {SYSTEM_FILE}, and downloading it "
            f"failed ({exc}).\nGet it one of these ways:\n"
            f"  - install the Debian package: apt-get install {APT_PACKAGE}\n"
            f"  - copy WordNet 3.0's dict/data.noun to {folder / 'data.noun'} "
            f"(default folder: $LRFREE_DATA_DIR/wordnet)\n"
            f"  - download {TARBALL_URL}"
        ) from exc


@functools.lru_cache(maxsize=2)
def load_wordnet_nouns(data_dir: str | None = None) -> tuple[tuple[str, ...], torch.Tensor]:
    """All noun glosses and their int64 class labels; cached per process."""
    glosses, labels = parse_data_noun(locate_data_noun(data_dir))
    return tuple(glosses), torch.tensor(labels, dtype=torch.int64)


def stratified_split(
    labels: torch.Tensor, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test indices holding `test_fraction` of every class (rounded, at least one)."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for cls in range(int(labels.max()) + 1):
        members = (labels == cls).nonzero().squeeze(1)
        if members.numel() == 0:
            continue
        members = members[torch.randperm(members.numel(), generator=gen)]
        n_test = max(1, round(test_fraction * members.numel()))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return torch.cat(train), torch.cat(test)


def balanced_subset(
    labels: torch.Tensor, index: torch.Tensor, size: int, seed: int
) -> torch.Tensor:
    """`size` entries of `index`, dealt round-robin over classes in a seeded random order.

    Classes are as even as their sizes allow: a class that runs out drops from the deal, so a
    small subset is balanced and a large one tends to the class proportions.
    """
    if size > index.numel():
        raise ValueError(f"asked for {size} of {index.numel()} examples")
    gen = torch.Generator().manual_seed(seed)
    sub = labels[index]
    rank = torch.empty(index.numel(), dtype=torch.int64)
    for cls in sub.unique():
        where = (sub == cls).nonzero().squeeze(1)
        rank[where[torch.randperm(where.numel(), generator=gen)]] = torch.arange(where.numel())
    # Sort by (position within its class, random tie-break across classes): one round per rank.
    tie = torch.randperm(index.numel(), generator=gen)
    order = torch.argsort(rank * index.numel() + tie)
    return index[order[:size]]
