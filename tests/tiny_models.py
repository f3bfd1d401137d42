"""Tiny random checkpoints of every supported family, written with ``save_pretrained``.

Tests load them back through the real loading path (``infllm_cli.models.load_model`` /
``from_pretrained``), offline. The tokenizer is a byte-level BPE trained in code on a small corpus, so it
round-trips any text.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = [
    "Once upon a time there was a little robot who loved to read long books.",
    "The captain sailed the ship across the sea; the first mate betrayed him.",
    "def main():\n    return authenticate(user, password)\n",
    "Question: who wrote the report? Answer: the committee.",
] * 20


#: The tiny tokenizer's special tokens (unknown, begin / end of sequence, end of a chat turn).
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|end|>"]


def make_tokenizer(vocab_size: int = 320, chat_template: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(family: str, vocab_size: int):
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    if family == "llama":
        return transformers.LlamaConfig(**common)
    if family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None)
    if family == "qwen2":
        return transformers.Qwen2Config(**common, use_sliding_window=False)
    if family == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=16, use_sliding_window=False)
    if family == "phi3":
        return transformers.Phi3Config(**common, partial_rotary_factor=0.5, sliding_window=None)
    raise ValueError(family)


def make_tiny_model(path: Path, family: str = "llama", *, chat_template: bool = False, seed: int = 0) -> Path:
    """Create, save and return the directory of a tiny random ``family`` model with its tokenizer."""
    import transformers

    path = Path(path)
    tokenizer = make_tokenizer(chat_template=chat_template)
    config = tiny_config(family, len(tokenizer))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    # Larger-than-default weights give peaked attention, so position errors would show in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "qkv_proj.weight")):
                p.mul_(8.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
