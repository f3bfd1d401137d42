"""Memory-attention kernels for infllm: Triton kernels beside their PyTorch fp32 reference.

Installed as ``infllm_kernels`` (the bare name ``kernels`` belongs to Hugging Face's kernel hub).
"""

from .backend import BACKENDS, Backend, BackendError, select_backend

__all__ = ["BACKENDS", "Backend", "BackendError", "select_backend"]
