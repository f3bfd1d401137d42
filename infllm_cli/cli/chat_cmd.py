"""``infllm chat``: a conversation about a document read once. Registered on the app by :mod:`.app`."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from ..errors import InputError, UsageError
from ..prompting import Turn
from .app import EXIT_CODES_HELP, SourceArg, app, emit, emit_json, emit_sources, open_session, read_line, stats_line, stream_answer
from .chat_input import COMMANDS_HELP, ChatInput, chat_command
from .options import Options, shared
from .runtime import handle_errors, start
from .stdio import stdin_problem, write_err

log = logging.getLogger("infllm.cli")


@app.command(epilog=EXIT_CODES_HELP)
@shared("model", "backend", "memory", "generation", "source", "limit", "cite", "output", "cache")
def chat(
    source: SourceArg,
    independent: Annotated[bool, typer.Option("--independent", help="Answer each question on its own, without the earlier turns.")] = False,
    *,
    opts: Options,
) -> None:
    """Chat about SOURCE: questions are read from stdin, one per line.

    The source is read once. Each answer is streamed to stdout; when stdin is not a terminal each answer
    follows a heading line "## <question>", as with `ask -q`. The conversation is kept: every question is
    answered after the document and the earlier questions and answers of the session (--independent
    answers each on its own). Commands: /help, /reset (forget the conversation, keep the document),
    /quit (or /exit, or the end of the input). On a terminal, lines can be edited and earlier questions
    recalled with the arrow keys; Ctrl-C stops the answer being written and returns to the prompt
    ("> " on the terminal), and Ctrl-C at the prompt ends the chat (exit 130). A question that is too
    long (see `ask`) is skipped with a warning.
    """
    with handle_errors(opts):
        if source == "-":
            raise UsageError("chat reads its questions from stdin, so the source cannot be stdin; pass a file or directory")
        problem = stdin_problem()
        if problem:
            raise InputError(f"{problem}: chat reads its questions from stdin")
        reporter = start(opts)
        from .session import StatsMark, check_question, check_question_tokens, question_token_limit

        prep, runner, session = open_session(source, opts, reporter)
        log.info("%s", read_line(session.stats(StatsMark.of(runner))))
        reader = ChatInput(sys.stdin, prompt=not opts.quiet)
        if reader.terminal:
            log.info("ask a question; /help lists the commands")
        limit = question_token_limit(prep.memory, opts.attention, prep.model_config)
        extra = {"preset": prep.preset_name, "attention": opts.attention, "model": prep.model_name}
        history: list[Turn] = []
        answered = 0
        while True:
            line = reader.read()
            if line is None:
                break
            q = line.strip()
            if not q:
                continue
            command = chat_command(q)
            if command in ("quit", "exit"):
                break
            if command == "reset":
                history.clear()
                log.info("conversation forgotten; the document stays in memory")
                continue
            if command == "help":
                write_err(COMMANDS_HELP)
                continue
            if command is not None:
                log.warning("unknown command /%s; /help lists the commands", command)
                continue
            try:
                check_question(q)
                check_question_tokens(q, prep.tokenizer, limit)
            except UsageError as exc:
                log.warning("%s; question skipped", exc)
                continue
            if not reader.terminal and not opts.json:
                emit(("\n" if answered else "") + f"## {q}\n")
            mark = StatsMark.of(runner)
            try:
                asked = session.ask(q, prep.gen, () if independent else history, cite=opts.cite,
                                    max_sources=opts.max_sources)
                answer = stream_answer(asked, reporter, runner, prep.gen, to_stdout=not opts.json)
            except KeyboardInterrupt:
                if not reader.terminal:
                    raise
                if not opts.json:
                    emit("\n")
                log.warning("answer stopped; the document is still in memory")
                continue
            answered += 1
            stats = session.stats(mark, extra | {"turn": len(history) + 1})
            if not opts.json:
                emit("\n")
            sources = emit_sources(asked, opts)
            if opts.json:
                emit_json({"question": q, "answer": answer.text, "truncated": answer.truncated, "sources": sources,
                           "stats": stats})
            history.append(Turn(q, answer.text))
            log.debug("%s", stats_line(stats, with_read=False))
