import os

import torch

# Before anything imports triton: without CUDA, run the Triton kernels on the CPU interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
