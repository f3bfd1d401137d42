"""Reading the questions of ``infllm chat``: line editing on a terminal, chat commands, Ctrl-C and Ctrl-D.

When stdin and stdout are both terminals, questions are read with :mod:`readline` (stdlib): line editing,
arrow keys and an in-session history (nothing is written to disk). Otherwise lines are read as they come,
and the prompt, when shown (stdin a terminal), goes to stderr so that stdout keeps only answers.

A line that starts with ``/`` and a word is a command (:data:`COMMANDS_HELP`); anything else is a question.
"""

from __future__ import annotations

import re
import sys
from typing import Any, TextIO

from .stdio import write_err

PROMPT = "> "

COMMANDS_HELP = """\
commands:
  /help    this list
  /reset   forget the conversation so far (the document stays in memory)
  /quit    end the chat (also /exit, or Ctrl-D at an empty prompt)
Ctrl-C stops the answer being written and returns to the prompt; at the prompt it ends the chat."""

COMMANDS = ("help", "reset", "quit", "exit")

_COMMAND = re.compile(r"/([A-Za-z][\w-]*)(?:\s|$)")


def chat_command(line: str) -> str | None:
    """The command name of a ``/command`` line (lower case, without the slash), or None for a question."""
    match = _COMMAND.match(line.strip())
    return match.group(1).lower() if match else None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (OSError, ValueError, AttributeError):
        return False


def _readline() -> Any:
    try:
        import readline  # noqa: F401  (input() uses it once imported)
    except ImportError:  # pragma: no cover - Python built without readline
        return None
    return sys.modules["readline"]


class ChatInput:
    """The chat's source of lines: :meth:`read` returns the next line, or None at the end of the input."""

    def __init__(self, stdin: TextIO, *, prompt: bool = True) -> None:
        self.stdin = stdin
        self.terminal = _isatty(stdin)
        self.show_prompt = prompt and self.terminal
        # input() edits lines with readline only when stdin and stdout are the terminal
        self.readline = _readline() if self.terminal and _isatty(sys.stdout) and stdin is sys.stdin else None

    @property
    def editing(self) -> bool:
        return self.readline is not None

    def read(self) -> str | None:
        """The next line without its newline; None at the end of the input (Ctrl-D at an empty prompt).

        Ctrl-C at the prompt raises KeyboardInterrupt (the chat ends with 130); when text had been typed
        the line is dropped instead and "" returned, as a shell does.
        """
        if self.editing:
            try:
                return input(PROMPT if self.show_prompt else "")
            except EOFError:
                return None
            except KeyboardInterrupt:
                typed = self.readline.get_line_buffer() if hasattr(self.readline, "get_line_buffer") else ""
                if typed.strip():
                    write_err("")
                    return ""
                raise
        if self.show_prompt:
            try:
                sys.stderr.write(PROMPT)
                sys.stderr.flush()
            except (OSError, ValueError, AttributeError):
                pass
        line = self.stdin.readline()
        if not line:
            return None
        return line.rstrip("\r\n")
