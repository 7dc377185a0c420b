import os

import pytest
import torch

# Nothing in these tests may reach a hub; set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # tiny models on a shared machine: extra threads only spin-wait
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
