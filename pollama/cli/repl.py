"""The interactive side of ``pollama run``: a chat session read a line at a time.

Lines starting with ``/`` are commands (``/?`` lists them); ``\"\"\"`` opens a
message spanning lines, closed by a line ending in ``\"\"\"``. Input comes from
a ``read_line(prompt)`` function (``input`` on a terminal), output goes to text
streams, so tests drive a session with a list of lines.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from pollama.cli.chat import load_model, stream_reply, verbose_stats
from pollama.cli.client import Client, ClientError
from pollama.cli.common import is_terminal
from pollama.cli.describe import summary
from pollama.errors import InvalidOption
from pollama.options.parameters import OPTIONS, OptionType, parse_parameter

PROMPT = ">>> "
CONTINUATION = "... "
QUOTES = '"""'

HELP = f"""Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use {QUOTES} to begin a multi-line message."""

SET_HELP = f"""Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats

Use {QUOTES} to span a system message over lines."""

SHOW_HELP = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template"""

PARAMETER_HELP = """Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters"""

SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor
  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit pollama (/bye)"""


@dataclass
class Session:
    """What a chat session sends with every message."""

    model: str
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    format: str | None = None
    keep_alive: float | str | None = None
    verbose: bool = False
    wordwrap: bool = True

    def request(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.options:
            body["options"] = dict(self.options)
        if self.format:
            body["format"] = self.format
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body

    def messages_with(self, prompt: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history, {"role": "user", "content": prompt}]


class Repl:
    def __init__(
        self,
        client: Client,
        session: Session,
        *,
        read_line: Callable[[str], str],
        out: TextIO,
        err: TextIO,
        width: Callable[[], int] | None = None,
    ) -> None:
        self.client = client
        self.session = session
        self.read_line = read_line
        self.out = out
        self.err = err
        self.width = width
        """The terminal's width, for word wrap; None when output is not a terminal."""
        self.info: dict[str, Any] = {}

    def start(self) -> None:
        """Look the model up and load it; ResponseError (404) if it does not exist."""
        self.info = self.client.show(self.session.model)
        load_model(
            self.client, self.session.request([]), self.err if is_terminal(self.err) else None
        )

    def run(self) -> None:
        """Read and act on lines until ``/bye`` or end of input."""
        while True:
            try:
                line = self.read_message()
            except EOFError:
                self._print("")
                return
            except KeyboardInterrupt:
                self._print("\nUse Ctrl + d or /bye to exit.")
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
            elif line.strip():
                self.send(line)

    # -- input ---------------------------------------------------------------------------------

    def read_message(self) -> str:
        """One line, or several when it opens with ``\"\"\"`` (also after ``/set system``)."""
        line = self.read_line(PROMPT)
        prefix = ""
        if line.startswith("/set system " + QUOTES):
            prefix, line = "/set system ", line[len("/set system ") :]
        if not line.startswith(QUOTES):
            return prefix + line
        rest = line[len(QUOTES) :]
        parts: list[str] = []
        while True:
            stripped = rest.rstrip()
            if stripped.endswith(QUOTES):
                parts.append(stripped[: -len(QUOTES)])
                break
            parts.append(rest)
            rest = self.read_line(CONTINUATION)
        if parts and not parts[0].strip():  # the opening quotes stood alone on their line
            parts = parts[1:]
        if parts and not parts[-1].strip():  # so did the closing ones
            parts = parts[:-1]
        return prefix + "\n".join(parts)

    # -- commands ------------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Act on a ``/`` command; False when the session should end."""
        word, _, rest = line.partition(" ")
        word = word.lower()
        if word in ("/bye", "/exit"):
            return False
        if word == "/clear":
            self.session.history.clear()
            self._print("Cleared session context")
        elif word == "/set":
            self._set(rest.strip())
        elif word == "/show":
            self._show(rest.strip().lower())
        elif word == "/load":
            self._load(rest.strip())
        elif word in ("/?", "/help"):
            topic = rest.strip().lower()
            self._print(
                {"shortcuts": SHORTCUTS, "shortcut": SHORTCUTS, "set": SET_HELP}.get(
                    topic, SHOW_HELP if topic == "show" else HELP
                )
            )
        else:
            self._print(f"Unknown command '{word}'. Type /? for help")
        return True

    def _set(self, args: str) -> None:
        what, _, value = args.partition(" ")
        what = what.lower()
        session = self.session
        if what == "parameter":
            self._set_parameter(value)
        elif what == "system":
            if not value.strip():
                self._print("Usage:\n  /set system <string>")
                return
            session.system = value.strip()
            self._print("Set system message.")
        elif what == "format":
            if value.strip().lower() != "json":
                self._print("Invalid or missing format. For 'json' mode use '/set format json'")
                return
            session.format = "json"
            self._print("Set format to 'json' mode.")
        elif what == "noformat":
            session.format = None
            self._print("Disabled format.")
        elif what in ("verbose", "quiet"):
            session.verbose = what == "verbose"
            self._print(f"Set '{what}' mode.")
        elif what in ("wordwrap", "nowordwrap"):
            session.wordwrap = what == "wordwrap"
            self._print(f"Set '{what}' mode.")
        elif what in ("history", "nohistory"):
            self._print(f"Set '{what}' mode.")
        elif not what:
            self._print(SET_HELP)
        else:
            self._print(f"Unknown command '/set {what}'. Type /? for help")

    def _set_parameter(self, text: str) -> None:
        try:
            args = shlex.split(text)
        except ValueError:
            args = text.split()
        if len(args) < 2:
            self._print("Usage:\n  /set parameter <name> <value>\n\n" + PARAMETER_HELP)
            return
        name, values = args[0].lower(), args[1:]
        try:
            option = OPTIONS.get(name)
            if option is not None and option.type is OptionType.STRING_LIST:
                value: Any = [parse_parameter(name, item) for item in values]
            else:
                value = parse_parameter(name, " ".join(values))
        except InvalidOption as exc:
            self._print(f"Couldn't set parameter: {exc}")
            return
        self.session.options[name] = value
        self._print(f"Set parameter '{name}' to '{', '.join(values)}'")

    def _show(self, what: str) -> None:
        info, session = self.info, self.session
        if what == "info":
            self._print(summary(info).rstrip("\n"))
        elif what == "license":
            text = info.get("license")
            if isinstance(text, list):
                text = "\n".join(str(item) for item in text)
            self._print(text or "No license was specified for this model.")
        elif what == "modelfile":
            self._print(str(info.get("modelfile") or "").rstrip("\n"))
        elif what in ("parameters", "params"):
            self._show_parameters()
        elif what == "system":
            text = session.system or info.get("system")
            self._print(text or "No system message was specified for this model.")
        elif what == "template":
            self._print(info.get("template") or "No prompt template was specified for this model.")
        elif not what:
            self._print(SHOW_HELP)
        else:
            self._print(f"Unknown command '/show {what}'. Type /? for help")

    def _show_parameters(self) -> None:
        defined = str(self.info.get("parameters") or "").rstrip("\n")
        if defined:
            self._print("Model defined parameters:\n" + defined)
        else:
            self._print("No parameters were specified for this model.")
        if self.session.options:
            lines = []
            for key, value in sorted(self.session.options.items()):
                for item in value if isinstance(value, list) else [value]:
                    lines.append(f"{key:<30} {item}")
            self._print("\nUser defined parameters:\n" + "\n".join(lines))

    def _load(self, model: str) -> None:
        if not model:
            self._print("Usage:\n  /load <modelname>")
            return
        previous = self.session.model
        self.session.model = model
        self._print(f"Loading model '{model}'")
        try:
            self.start()
        except ClientError as exc:
            self.session.model = previous
            self.err.write(f"Error: {exc}\n")
            return
        self.session.history.clear()

    # -- chatting ------------------------------------------------------------------------------

    def send(self, prompt: str) -> None:
        """One turn: the answer streams to ``out``; Ctrl-C stops it and forgets the turn."""
        session = self.session
        body = session.request(session.messages_with(prompt))
        width = self.width() if self.width and session.wordwrap else None
        try:
            reply = stream_reply(self.client, body, self.out, wrap_width=width)
        except KeyboardInterrupt:
            self._print("")
            return
        except ClientError as exc:
            self.out.write("\n")
            self.err.write(f"Error: {exc}\n")
            return
        self.out.write("\n\n" if not reply.content.endswith("\n") else "\n")
        self.out.flush()
        session.history += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": reply.content},
        ]
        if session.verbose:
            self.err.write(verbose_stats(reply.final) + "\n\n")
            self.err.flush()

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()
