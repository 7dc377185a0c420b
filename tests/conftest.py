import os

import pytest
import torch

# Without CUDA the Triton kernels (lrfree.kernels.triton_step) are tested on CPU tensors
# through Triton's interpreter. triton.jit reads TRITON_INTERPRET when a kernel module is
# imported, and any test may import it first (every PSDASGD/PSSPS step asks whether the
# kernel can run), so it is set here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
