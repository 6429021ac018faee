"""Test-wide settings: Triton kernels run in the interpreter where there is no GPU, so CI checks them."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
