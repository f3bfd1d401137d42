"""Prompts that put a streamed document first and the question (or the request for a summary) last.

The document is never part of a rendered prompt string. A prompt is split into three token runs:

``prefix``    everything before the document: BOS, the chat template's opening (system turn, start of
              the user turn) and a task line such as "Read the document below, then answer the question
              that follows it." followed by ``<document>``;
``document``  the document's own tokens, streamed into the context memory (see :mod:`infllm_cli.tokens`);
``suffix``    everything after the document: ``</document>``, the question or request, the end of the
              user turn and the assistant's generation prompt.

The prefix does not depend on the question, so one read of ``prefix + document`` serves any number of
questions: the runner snapshots its memory after the document and restores it before each suffix.

With a chat template (instruct models) the user message is rendered with a sentinel in place of the
document and split at the sentinel; the prefix and suffix are tokenized separately (special-token
strings in the template, such as ``<|im_start|>``, become special tokens). Tokens the tokenizer adds by
default (BOS) are prepended to the prefix unless the template already starts with them. Later turns of a
chat are rendered as further user/assistant messages after the first, so the same prefix still holds.

Without a chat template (base models) the prompt is plain text::

    <BOS>{document}

    Question: {question}
    Answer:

and a summary request ends with ``Summary:`` instead; generation also stops at a following
``\\nQuestion:`` line, which base models tend to invent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

log = logging.getLogger("infllm.prompting")

SENTINEL = "\u2063INFLLM-DOCUMENT-SENTINEL\u2063"
_ANSWER_SENTINEL = "\u2063INFLLM-ANSWER-SENTINEL\u2063"

QA_INTRO = "Read the document below, then answer the question that follows it."
QA_INSTRUCTION = (
    "Answer using the document. Be specific and concise; if the document does not contain the answer, say so."
)
SUMMARY_INTRO = "Read the document below, then summarize it as asked after it."
SUMMARY_REQUESTS = {
    "brief": "Summarize the document above in one short paragraph.",
    "detailed": "Write a detailed summary of the document above: its purpose, its main points in order, and its conclusions.",
    "section": "Summarize this part of the document in a few sentences: its main points, names and facts.",
    "overall": (
        "The text above is a sequence of summaries of the consecutive parts of one document. "
        "Write an overall summary of the whole document in one or two paragraphs."
    ),
}
PLAIN_SUMMARY_CUES = {"brief": "Summary:", "detailed": "Detailed summary:", "section": "Summary of this part:", "overall": "Overall summary:"}


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of a chat: the question and the answer that was given."""

    question: str
    answer: str


@dataclass
class PromptFormat:
    """How to wrap a streamed document for one tokenizer. Build with :meth:`for_tokenizer`."""

    tokenizer: Any
    chat: bool
    leading_ids: list[int] = field(default_factory=list)  # tokens the tokenizer adds at the start by default
    turn_end_ids: list[int] = field(default_factory=list)  # ids that end an assistant turn (chat templates)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, *, use_chat_template: bool | None = None) -> "PromptFormat":
        """Chat format when the tokenizer has a chat template (unless ``use_chat_template`` is False)."""
        has_template = bool(getattr(tokenizer, "chat_template", None))
        chat = has_template if use_chat_template is None else (use_chat_template and has_template)
        fmt = cls(tokenizer=tokenizer, chat=chat, leading_ids=_leading_special_ids(tokenizer))
        if chat:
            try:
                fmt._split(fmt._qa_messages("?", [Turn("?", "!")]))  # renders the placeholder exactly once
                fmt.turn_end_ids = fmt._find_turn_end_ids()
            except Exception as exc:  # a template that cannot render our messages: fall back to plain text
                log.warning("the chat template cannot be used (%s: %s); using a plain-text prompt", type(exc).__name__, exc)
                fmt.chat = False
        return fmt

    @property
    def name(self) -> str:
        return "chat template" if self.chat else "plain text"

    # -- token helpers -------------------------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        """Template text: special-token strings become special tokens, nothing is added."""
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _text_ids(self, text: str) -> list[int]:
        """User text (a question): tokenized as text."""
        if not text:
            return []
        try:
            return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"])
        except TypeError:
            return self._ids(text)

    def _with_leading(self, ids: list[int]) -> list[int]:
        lead = self.leading_ids
        if lead and ids[: len(lead)] != lead:
            return lead + ids
        return ids

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        out = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=False
        )
        if not isinstance(out, str):  # some versions return a list for batched input
            out = out[0]
        return out

    def _split(self, messages: list[dict[str, str]]) -> tuple[str, str]:
        rendered = self._render(messages)
        parts = rendered.split(SENTINEL)
        if len(parts) != 2:
            raise ValueError(f"the chat template rendered the document placeholder {len(parts) - 1} times")
        return parts[0], parts[1]

    def _find_turn_end_ids(self) -> list[int]:
        """The special token that closes an assistant message (``<|im_end|>``, ``<|eot_id|>``, ...)."""
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _ANSWER_SENTINEL}]
        try:
            rendered = self._render(messages, add_generation_prompt=False)
        except Exception:
            return []
        if _ANSWER_SENTINEL not in rendered:
            return []
        after = rendered.split(_ANSWER_SENTINEL, 1)[1]
        ids = self._ids(after.lstrip(" "))
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        added = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
        for i in ids[:2]:
            if i in special or i in added:
                return [i]
        return []

    # -- prompts -------------------------------------------------------------------------------------

    def _user_message(self, intro: str, tail: str) -> str:
        return f"{intro}\n\n<document>\n{SENTINEL}\n</document>\n\n{tail}"

    def _chat_parts(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        prefix, suffix = self._split(messages)
        return self._with_leading(self._ids(prefix)), self._ids(suffix)

    def _qa_messages(self, question: str, history: Sequence[Turn]) -> list[dict[str, str]]:
        turns = [*history, Turn(question, "")]
        messages = [{"role": "user", "content": self._user_message(QA_INTRO, _qa_tail(turns[0].question.strip()))}]
        for previous, current in zip(turns, turns[1:]):
            messages.append({"role": "assistant", "content": previous.answer.strip()})
            messages.append({"role": "user", "content": current.question.strip()})
        return messages

    def qa_prefix(self) -> list[int]:
        """Tokens before the document for question answering (independent of the question)."""
        if self.chat:
            return self._chat_parts(self._qa_messages("?", ()))[0]
        return self._with_leading([])

    def qa_suffix(self, question: str, history: Sequence[Turn] = ()) -> list[int]:
        """Tokens after the document: earlier turns of a chat (if any), then ``question``."""
        if self.chat:
            return self._chat_parts(self._qa_messages(question, history))[1]
        text = "".join(f"\n\nQuestion: {t.question.strip()}\nAnswer: {t.answer.strip()}" for t in history)
        return self._text_ids(f"{text}\n\nQuestion: {question.strip()}\nAnswer:")

    def _summary_messages(self, kind: str, title: str | None) -> list[dict[str, str]]:
        return [{"role": "user", "content": self._user_message(_summary_intro(kind, title), SUMMARY_REQUESTS[kind])}]

    def summary_prefix(self, kind: str, title: str | None = None) -> list[int]:
        """Tokens before the text to summarize; ``kind`` is brief, detailed, section or overall."""
        if self.chat:
            return self._chat_parts(self._summary_messages(kind, title))[0]
        ids = self._with_leading([])
        if title:
            ids += self._text_ids(f"{title}\n\n")
        return ids

    def summary_suffix(self, kind: str, title: str | None = None) -> list[int]:
        if self.chat:
            return self._chat_parts(self._summary_messages(kind, title))[1]
        return self._ids(f"\n\n{PLAIN_SUMMARY_CUES[kind]}")

    def stop_strings(self) -> tuple[str, ...]:
        """Text at which to stop generating (base models keep inventing the next question)."""
        if self.chat:
            return ()
        return ("\nQuestion:", "\n\n\n")

    def stop_token_ids(self) -> tuple[int, ...]:
        return tuple(self.turn_end_ids)


def _qa_tail(question: str) -> str:
    return f"Question: {question}\n\n{QA_INSTRUCTION}"


def _summary_intro(kind: str, title: str | None) -> str:
    if kind == "section":
        return f"Read this part of a longer document{f' (section: {title})' if title else ''}, then summarize it as asked after it."
    if kind == "overall":
        return "Read the section summaries below, then write the summary asked for after them."
    return SUMMARY_INTRO


def _leading_special_ids(tokenizer: Any) -> list[int]:
    """Tokens the tokenizer puts before text by default (usually BOS), found by comparing encodings."""
    try:
        with_sp = list(tokenizer("a", add_special_tokens=True)["input_ids"])
        without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    except Exception:
        return []
    n = len(without)
    for i in range(len(with_sp) - n + 1):
        if with_sp[i : i + n] == without:
            return with_sp[:i]
    return []
