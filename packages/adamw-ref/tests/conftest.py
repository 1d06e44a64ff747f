import os

import torch

if not torch.cuda.is_available():
    # Must happen before anything imports triton: the Triton kernel then runs on the CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")
