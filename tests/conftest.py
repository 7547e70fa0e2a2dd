import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# under pytest-xdist (CI runs two workers on its two cores) a worker has one core
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER")
                      else min(2, torch.get_num_threads()))

from tests.helpers.tiny import TinyNet  # noqa: E402  (after ROOT is on sys.path)


@pytest.fixture
def one_thread():
    """Tiny models: one torch thread avoids the thread hand-offs that dominate on a busy
    machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_net():
    return TinyNet
