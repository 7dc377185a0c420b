import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # The benchmark tests train tiny models; on a shared 2-core machine extra threads only
    # spin-wait (several times slower), so run them on one and restore the setting after.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
