import os

import torch

# Triton kernels run in the CPU interpreter when there is no GPU; this must be set
# before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    # The interpreter evaluates inf/NaN arithmetic in numpy, which warns about it.
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")
