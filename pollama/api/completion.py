"""One completion as every API sees it: model → lease → prompt → runner → reply events.

The native routes (``/api/generate``, ``/api/chat``), the OpenAI routes and the
Anthropic route differ only in their wire shapes. Each builds a ``ChatCall`` or
``GenerateCall``, calls ``start_chat``/``start_generate`` and turns the events of
the returned ``Run`` into its own records::

    run = await start_chat(state, ChatCall(model=..., messages=[...]))
    async for event in run.events:      # Delta ... Delta, then one Finish
        ...

Everything that can be refused is refused before ``start_*`` returns (unknown
model, bad format, thinking or tools the model cannot do, a full queue), so each
API can still answer with an HTTP status. The lease is released when the event
stream ends, fails or is closed.

Replies are split into thinking, content and tool calls by ``pollama.chat.reply``
with the markers the model's template uses. A ``format`` constrains the answer,
not the thinking: with thinking on, the grammar waits for the end of the thinking
block (a lazy grammar in the runner).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pollama.api.limits import MAX_MESSAGES, MAX_TEMPLATE
from pollama.api.lora import check_lora
from pollama.api.metrics import CompletionMeter, Metrics
from pollama.api.state import ServerState
from pollama.api.vision import admit_images, message_images, tokens_per_image
from pollama.chat.capabilities import template_thinks
from pollama.chat.prompt import (
    Prompt,
    assemble_chat,
    generate_prompt,
    render_chat,
    truncate_chat,
)
from pollama.chat.reply import (
    Content,
    ReplyParser,
    Thinking,
    ThinkingTags,
    ToolCalls,
    ToolSyntax,
    infer_thinking,
    infer_tool_syntax,
    starts_in_thinking,
)
from pollama.chat.template import ChatTemplate, special_tokens, template_for
from pollama.errors import BadRequest
from pollama.ggufmeta import GGUFModel
from pollama.options.parameters import validate_options
from pollama.protocol.wire import (
    CompletionChunk,
    CompletionDone,
    CompletionRequest,
    Logprob,
    LoraScale,
    SamplingOptions,
)
from pollama.scheduler.loaded import Lease, ModelSpec

log = logging.getLogger(__name__)

ToolChoice = Literal["auto", "none", "required"] | str
"""``auto``: the model decides; ``none``: no tools offered; ``required``: it must call
one; any other string: it must call the tool of that name."""

THINK_BUDGETS = {"low": 1024, "medium": 4096, "high": -1}
"""Thinking tokens per level of ``think``/``reasoning_effort``; the runner closes the
block when they run out (-1: never)."""
THINK_LEVELS = frozenset(THINK_BUDGETS)


@dataclass(frozen=True)
class CallOut:
    """A tool call the model made, with the id and index the APIs report."""

    id: str
    index: int
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class Delta:
    """A piece of the reply: content, thinking or tool calls (one of them), and the
    logprobs of the tokens it came from, if asked for."""

    content: str = ""
    thinking: str = ""
    tool_calls: tuple[CallOut, ...] = ()
    logprobs: tuple[Logprob, ...] = ()


@dataclass(frozen=True)
class Finish:
    """The last event: why generation stopped and what it cost."""

    done_reason: str
    """stop | length (the runner's), whatever tool calls were made."""
    tool_calls: int
    prompt_eval_count: int
    """Prompt tokens evaluated (Ollama's meaning: cached ones are left out)."""
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    load_duration: int
    total_duration: int
    prompt_cached: int = 0
    """Prompt tokens the runner's cache already held."""
    draft_count: int = 0
    """Draft tokens verified (speculative decoding) and, of those, accepted."""
    draft_accepted: int = 0
    context: tuple[int, ...] | None = None
    """/api/generate's ``context``: the prompt and reply tokens (None for chat and raw)."""


Event = Delta | Finish


@dataclass
class Run:
    """A started completion; iterate ``events`` exactly once."""

    model: str
    """The name the request used."""
    events: AsyncIterator[Event]


@dataclass(frozen=True)
class _Common:
    model: str
    format: Any = None
    think: bool | str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    keep_alive: float | None = None
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    think_budget: int | None = None
    """Thinking tokens allowed (Anthropic's ``budget_tokens``); None: by ``think``'s level."""
    lora: tuple[LoraScale, ...] = ()
    """LoRA adapter scales for this request (``api.lora``); empty: the load scales."""


@dataclass(frozen=True)
class ChatCall(_Common):
    messages: Sequence[Mapping[str, Any]] = ()
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: ToolChoice = "auto"


def function_tool(name: str, description: str | None, parameters: Any) -> dict[str, Any]:
    """A tool as ChatCall takes it (Ollama's and OpenAI's chat shape), from the parts
    another API names its own way (Anthropic's ``input_schema``, Responses' flat tool)."""
    return {
        "type": "function",
        "function": {"name": name, "description": description or "", "parameters": parameters},
    }


@dataclass(frozen=True)
class GenerateCall(_Common):
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: Sequence[int] | None = None
    raw: bool = False
    images: Sequence[str] = ()


def check_template_size(template: str | None) -> None:
    if template and len(template) > MAX_TEMPLATE:
        raise BadRequest(f"template too long: {len(template)} characters (at most {MAX_TEMPLATE})")


def check_format(fmt: object) -> None:
    """Reject a bad ``format`` before anything loads (InvalidFormat/UnsupportedSchema → 400)."""
    if fmt is not None and fmt != "":
        from pollama.chat.grammar import grammar_from_format  # only `format` requests need it

        grammar_from_format(fmt)


# -- the reply's plan --------------------------------------------------------------------


@dataclass(frozen=True)
class _ReplyPlan:
    """How the reply is parsed and constrained, decided before anything is generated."""

    thinking: ThinkingTags | None
    tools: ToolSyntax | None
    grammar: str
    think: bool | None
    """What the template is told (None: its default)."""


def _think_flag(think: bool | str | None) -> bool | None:
    if isinstance(think, str):
        if think not in THINK_LEVELS:
            raise BadRequest(
                f"invalid think value: {think!r} (expected true, false, or one of "
                "low, medium, high)"
            )
        return True
    return think


def _reply_plan(
    name: str,
    template: ChatTemplate | None,
    call: _Common,
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: ToolChoice,
) -> _ReplyPlan:
    think = _think_flag(call.think)
    source = template.source if template is not None else ""
    # Exactly what /api/show reports as the "thinking" capability.
    can_think = template is not None and template_thinks(template)
    tags = infer_thinking(source) if template is not None else None
    if think and not can_think:
        raise BadRequest(f'"{name}" does not support thinking')
    syntax = None
    if tools:
        if template is None or not template.supports_tools:
            raise BadRequest(f'"{name}" does not support tools')
        syntax = infer_tool_syntax(source, reads_tools=True)
    grammar = ""
    if call.format not in (None, ""):
        from pollama.chat.grammar import grammar_from_format  # only `format` requests need it

        grammar = grammar_from_format(call.format)
    if tools and tool_choice not in ("auto", "none"):
        if grammar:
            raise BadRequest("a required tool call and a format cannot be combined")
        grammar = tool_call_grammar(tools, tool_choice, syntax or ToolSyntax(None, None))
    return _ReplyPlan(
        thinking=tags if think is not False else None,
        tools=syntax,
        grammar=grammar,
        think=think,
    )


def tool_call_grammar(
    tools: Sequence[Mapping[str, Any]], choice: ToolChoice, syntax: ToolSyntax
) -> str:
    """A grammar that admits exactly one call of the chosen tool (or of any tool, for
    ``required``), its arguments valid against the tool's parameter schema, written in
    the model's own tool-call syntax. An unsupported schema keyword → 400 naming it."""
    functions = [_function(tool) for tool in tools]
    if choice != "required":
        functions = [f for f in functions if f.get("name") == choice]
        if not functions:
            raise BadRequest(f"tool_choice names an unknown tool: {choice!r}")
    alternatives = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f["name"]},
                "arguments": f.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
        }
        for f in functions
    ]
    schema = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    prefix, suffix = syntax.open or "", syntax.close or ""
    if syntax.open == "[TOOL_CALLS]":  # Mistral's calls are a JSON list
        prefix, suffix = prefix + "[", "]"
    from pollama.chat.grammar import json_schema_to_grammar  # only forced tool calls need it

    return json_schema_to_grammar(schema, prefix=prefix, suffix=suffix)


def _function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    function = tool.get("function", tool)
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise BadRequest("each tool needs a function with a name")
    return function


def _budget(call: _Common) -> int:
    if call.think_budget is not None:
        return max(call.think_budget, 1)
    return THINK_BUDGETS.get(call.think, -1) if isinstance(call.think, str) else -1


def _open_thinking(plan: _ReplyPlan, prompt: Prompt) -> tuple[Prompt, bool]:
    """Whether the reply starts inside a thinking block, and the prompt for it.

    When thinking was asked for and the template does not open the block itself, the
    prompt opens it (as DeepSeek-R1's template always does): then the runner knows where
    the answer starts, for a format's grammar and for a thinking budget.
    """
    tags = plan.thinking
    if tags is None:
        return prompt, False
    if starts_in_thinking(prompt.text, tags):
        return prompt, True
    if plan.think:
        return replace(prompt, text=f"{prompt.text}{tags.open}\n"), True
    return prompt, False


# -- starting a run -----------------------------------------------------------------------


async def start_chat(state: ServerState, call: ChatCall) -> Run:
    """Resolve, admit and start a chat completion (see the module docstring)."""
    check_format(call.format)
    if len(call.messages) > MAX_MESSAGES:
        raise BadRequest(f"too many messages: {len(call.messages)} (at most {MAX_MESSAGES})")
    spec, resolved = await state.model(call.model)
    check_lora(spec, call.lora)
    await admit_images(state, spec, message_images(call.messages))
    options = validate_options(dict(call.options))
    template = template_for(spec.model, resolved.template)
    tools = call.tools if call.tool_choice != "none" else None
    plan = _reply_plan(spec.name, template, call, tools, call.tool_choice)
    started = time.perf_counter_ns()
    lease = await state.scheduler.acquire(spec, options, call.keep_alive)
    try:
        server = lease.server
        bos, eos = _special(spec.model)
        messages = assemble_chat(
            call.messages,
            system_default=resolved.system,
            modelfile_messages=list(resolved.messages),
        )

        def render(kept: list[Any]) -> Prompt:
            return render_chat(template, kept, tools=tools, bos=bos, eos=eos, think=plan.think)

        if call.truncate:
            per_image = tokens_per_image(spec)

            async def count(kept: list[Any]) -> int:
                images = len(message_images(kept))
                return len(await server.tokenize(render(kept).text)) + per_image * images

            messages = await truncate_chat(messages, count, server.context_length)
        prompt = render(messages)
    except BaseException:
        await lease.release()
        raise
    tool_names = frozenset(_function(t)["name"] for t in tools or ())
    return await _start(
        call, spec, lease, prompt, plan, started, tool_names, state.metrics, generate=False
    )


async def start_generate(state: ServerState, call: GenerateCall) -> Run:
    """Resolve, admit and start a /api/generate-style completion."""
    check_format(call.format)
    if call.raw and (call.template or call.system or call.context):
        raise BadRequest("raw mode does not support template, system, or context")
    check_template_size(call.template)
    spec, resolved = await state.model(call.model)
    check_lora(spec, call.lora)
    await admit_images(state, spec, call.images)
    options = validate_options(dict(call.options))
    template = template_for(spec.model, call.template or resolved.template)
    plan = _reply_plan(spec.name, None if call.raw else template, call, None, "auto")
    started = time.perf_counter_ns()
    lease = await state.scheduler.acquire(spec, options, call.keep_alive)
    try:
        bos, eos = _special(spec.model)
        context = await lease.server.detokenize(list(call.context)) if call.context else ""
        prompt = generate_prompt(
            template,
            prompt=call.prompt,
            system=call.system,
            suffix=call.suffix,
            raw=call.raw,
            images=call.images,
            modelfile_system=resolved.system,
            modelfile_messages=list(resolved.messages),
            context=context,
            bos=bos,
            eos=eos,
            think=plan.think,
            model=spec.name,
        )
    except BaseException:
        await lease.release()
        raise
    return await _start(
        call, spec, lease, prompt, plan, started, frozenset(), state.metrics, generate=True
    )


async def _start(
    call: _Common,
    spec: ModelSpec,
    lease: Lease,
    prompt: Prompt,
    plan: _ReplyPlan,
    started: int,
    tool_names: frozenset[str],
    metrics: Metrics,
    *,
    generate: bool,
) -> Run:
    prompt, in_thinking = _open_thinking(plan, prompt)
    try:
        stream = lease.server.completion(_runner_request(call, lease, prompt, plan, in_thinking))
    except BaseException:
        await lease.release()
        raise
    parser = None
    if plan.thinking is not None or plan.tools is not None:
        parser = ReplyParser(
            thinking=plan.thinking,
            tools=plan.tools,
            in_thinking=in_thinking,
            tool_names=tool_names or None,
        )
    # /api/generate (not raw) answers with the tokens of the prompt and the reply.
    with_context = generate and isinstance(call, GenerateCall) and not call.raw
    meter = metrics.completion(spec.name, started)
    relay = _Relay(lease, stream, parser, meter, started, prompt.text if with_context else None)
    return Run(model=call.model, events=relay.events())


def _runner_request(
    call: _Common, lease: Lease, prompt: Prompt, plan: _ReplyPlan, in_thinking: bool
) -> CompletionRequest:
    # Inside thinking, the grammar waits for its end; otherwise it holds from the start.
    after = plan.thinking.close if in_thinking and plan.thinking else ""
    return CompletionRequest(
        prompt=prompt.text,
        images=prompt.images,
        options=SamplingOptions.from_json(lease.options),
        logprobs=call.logprobs,
        top_logprobs=call.top_logprobs,
        shift=call.shift,
        truncate=call.truncate,
        grammar=plan.grammar,
        think_end=after,
        think_budget=_budget(call) if after else -1,
        lora=call.lora,
    )


class _Relay:
    """The runner's stream as a run's events: parsed into thinking, content and tool calls
    when the reply needs it, metered, and the slot given back when it ends."""

    def __init__(
        self,
        lease: Lease,
        stream: AsyncGenerator[CompletionChunk | CompletionDone, None],
        parser: ReplyParser | None,
        meter: CompletionMeter,
        started: int,
        context_prompt: str | None,
    ) -> None:
        self._lease = lease
        self._stream = stream
        self._parser = parser
        self._meter = meter
        self._started = started
        self._context_prompt = context_prompt
        self._calls = 0

    async def events(self) -> AsyncIterator[Event]:
        text: list[str] = []
        parser, meter = self._parser, self._meter
        answered = False  # the plain path's own flag: not even a call per token
        try:
            async for item in self._stream:
                if isinstance(item, CompletionChunk):
                    text.append(item.content)
                    if parser is None:  # the hot path: plain text, one delta per chunk
                        if not answered and item.content:
                            meter.first_token()
                            answered = True
                        yield Delta(content=item.content, logprobs=item.logprobs)
                        continue
                    for delta in self._parsed(parser.feed(item.content)):
                        yield delta
                    if item.logprobs:
                        yield Delta(logprobs=item.logprobs)
                    continue
                if parser is not None:
                    for delta in self._parsed(parser.finish()):
                        yield delta
                yield await self._finish(item, text)
        finally:
            # A client that went away closes us: close the runner's stream now (the
            # runner stops generating when its connection drops), not whenever the
            # generator is collected, and only then give the slot back.
            try:
                await self._stream.aclose()
            finally:
                await self._lease.release()

    def _parsed(self, parsed: Sequence[Content | Thinking | ToolCalls]) -> list[Delta]:
        deltas = _deltas(parsed, self._calls)
        for delta in deltas:
            self._meter.first_token()
            self._calls += len(delta.tool_calls)
        return deltas

    async def _finish(self, done: CompletionDone, text: list[str]) -> Finish:
        self._meter.finish(done.prompt_eval_count, done.eval_count, done.eval_duration)
        self._meter.drafted(done.draft_count, done.draft_accepted)
        context = None
        if self._context_prompt is not None:
            reply = self._context_prompt + "".join(text)
            context = tuple(await self._lease.server.tokenize(reply))
        return Finish(
            done_reason=done.done_reason,
            tool_calls=self._calls,
            prompt_eval_count=done.prompt_eval_count,
            prompt_eval_duration=done.prompt_eval_duration,
            eval_count=done.eval_count,
            eval_duration=done.eval_duration,
            load_duration=self._lease.load_duration,
            total_duration=time.perf_counter_ns() - self._started,
            prompt_cached=done.prompt_cached,
            draft_count=done.draft_count,
            draft_accepted=done.draft_accepted,
            context=context,
        )


def _deltas(parsed: Sequence[Content | Thinking | ToolCalls], calls: int) -> list[Delta]:
    out: list[Delta] = []
    for event in parsed:
        if isinstance(event, Content):
            out.append(Delta(content=event.text))
        elif isinstance(event, Thinking):
            out.append(Delta(thinking=event.text))
        else:
            made = tuple(
                CallOut(id=_call_id(), index=calls + i, name=c.name, arguments=c.arguments)
                for i, c in enumerate(event.calls)
            )
            calls += len(made)
            out.append(Delta(tool_calls=made))
    return out


def _call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _special(model: GGUFModel) -> tuple[str, str]:
    """BOS/EOS strings for templates; no BOS when the tokenizer adds its own (no doubles)."""
    bos, eos = special_tokens(model)
    adds_bos = model.get("tokenizer.ggml.add_bos_token")
    if adds_bos is None:
        adds_bos = model.get("tokenizer.ggml.model") == "llama"  # SentencePiece adds BOS
    return ("" if adds_bos else bos), eos


async def load_or_unload(
    state: ServerState, model: str, options: Mapping[str, Any], keep_alive: float | None
) -> str:
    """A request with nothing to generate loads the model; with keep_alive 0 it unloads
    it instead. Returns the done_reason to report: ``load`` or ``unload``."""
    spec, _ = await state.model(model)
    checked = validate_options(dict(options))
    if keep_alive == 0:
        await state.scheduler.unload(spec.name)
        return "unload"
    lease = await state.scheduler.acquire(spec, checked, keep_alive)
    await lease.release()
    return "load"
