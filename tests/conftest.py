import os
import warnings

import pytest
import torch

# Two cores: keep intra-op threads from oversubscribing when DDP tests start two processes.
torch.set_num_threads(1)
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _quiet_lightning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LitLogger.*")
        yield

# Scripts launched by the DDP tests in subprocesses: importing them would run them.
collect_ignore = ["scripts"]
