"""infllm: read documents far longer than a model's context window with InfLLM context memory."""

__version__ = "0.1.0"
