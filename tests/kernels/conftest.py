"""Kernel tests: run the Triton kernels through the interpreter when there is no GPU.

TRITON_INTERPRET must be set before ``triton.jit`` decorates the kernels (when ``infllm_kernels.triton_ops``
is first imported), so it is set here, before any test module imports them.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402  (torch does not import triton)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
