"""Model management: /api/show, create, blobs, copy, delete, pull and push.

Store work runs in worker threads (it reads and fsyncs files); progress from it, and
from the registry client, is streamed as NDJSON ``{status, digest, total, completed}``
lines. Everything a request can get wrong is checked before the first line, so it
is answered with a status (400, 404); a failure after that is a final ``{"error"}``
line.

Every write holds the store's lock (``store.lock``) for its whole duration, so writes
from every server sharing the store run one at a time; one that has to wait streams
``WAITING`` first (create, pull). Reads (show, tags, the HEAD of a blob) take no lock.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from pollama.api.completion import check_template_size
from pollama.api.errors import CLIENT_CLOSED_REQUEST
from pollama.api.ollama.generate import NDJSON, parse_body
from pollama.api.ollama.types import (
    CopyRequest,
    CreateRequest,
    DeleteRequest,
    Message,
    ModelDetails,
    ProgressResponse,
    PullRequest,
    PushRequest,
    ShowRequest,
    ShowResponse,
    rfc3339,
)
from pollama.api.state import ServerState
from pollama.api.streaming import first_and_rest, ndjson, unless_client_leaves
from pollama.chat.capabilities import capabilities
from pollama.chat.template import ChatTemplate, template_for
from pollama.errors import BadRequest, InvalidModelFile, ModelNotFound, PollamaError
from pollama.ggufmeta import GGUFModel, TruncatedArray, read_model
from pollama.options.parameters import OPTIONS, validate_options
from pollama.store.disk import PRUNE_GRACE, Store
from pollama.store.lock import WAITING, to_thread_to_the_end
from pollama.store.manifest import MODEL, parse_digest
from pollama.store.names import ModelName
from pollama.store.resolved import model_details

if TYPE_CHECKING:
    from pollama.api.ollama.quantize import QuantizeJob
    from pollama.store.progress import Progress

# What only a show, a create, a pull or a push uses (Modelfile rendering, the quantizer,
# the draft's vocabulary check, the registry client) is imported by that route: the
# server's start does not wait for it.

router = APIRouter()

# Metadata /api/show leaves out: the name is shown elsewhere, the template as "template".
_HIDDEN_KEYS = frozenset({"general.name", "tokenizer.chat_template"})
# Arrays longer than this are elided unless verbose (the vocabulary, merges, scores).
_SHORT_ARRAY = 5
_DRIVE = re.compile(r"[A-Za-z]:")


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.pollama
    return state


# -- show ----------------------------------------------------------------------------------


@router.post("/api/show")
async def show(request: Request) -> Response:
    body = await parse_body(request, ShowRequest)
    if not body.model:
        raise BadRequest("model is required")
    from pollama.store.modelfile import modelfile_for, parameters_text

    spec, resolved = await _state(request).model(body.model)
    if body.system or body.template or body.options:  # deprecated per-request overrides
        overrides = validate_options(body.options or {})
        resolved = replace(
            resolved,
            system=body.system or resolved.system,
            template=body.template or resolved.template,
            parameters={**resolved.parameters, **overrides},
        )
    model_info, tensors = await asyncio.to_thread(_model_info, spec.model, body.verbose)
    response = ShowResponse(
        license="\n".join(resolved.license) or None,
        modelfile=modelfile_for(resolved),
        parameters=parameters_text(resolved.parameters) or None,
        template=resolved.template or spec.model.chat_template or None,
        system=resolved.system or None,
        details=ModelDetails.model_validate(model_details(resolved.config)),
        messages=[Message.model_validate(m) for m in resolved.messages] or None,
        model_info=model_info,
        tensors=tensors,
        capabilities=capabilities(
            spec.model.metadata,
            _template_or_none(spec.model, resolved.template),
            has_projector=bool(spec.projector),
        ),
        modified_at=rfc3339(resolved.modified_at),
    )
    return Response(response.model_dump_json(exclude_none=True), media_type="application/json")


def _model_info(
    gguf: GGUFModel, verbose: bool
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """GGUF key/values as /api/show shows them; the tensor list only when ``verbose``."""
    if verbose:
        gguf = read_model(gguf.path, max_array_len=-1)  # every array in full
    info: dict[str, Any] = {}
    for key, value in gguf.metadata.items():
        if key in _HIDDEN_KEYS:
            continue
        if isinstance(value, TruncatedArray):
            value = None  # too long to have been read: Ollama shows null
        elif isinstance(value, list) and len(value) > _SHORT_ARRAY and not verbose:
            value = []
        elif isinstance(value, float) and not math.isfinite(value):
            value = None
        info[key] = value
    if not verbose:
        return info, None
    tensors = [{"name": t.name, "type": t.type_name, "shape": list(t.shape)} for t in gguf.tensors]
    return info, tensors


def _template_or_none(gguf: GGUFModel, modelfile_template: str | None) -> ChatTemplate | None:
    """The model's template; None when it has none or it does not compile (a broken
    template takes capabilities away; it does not break /api/show)."""
    try:
        return template_for(gguf, modelfile_template)
    except PollamaError:
        return None


# -- create --------------------------------------------------------------------------------


@router.post("/api/create")
async def create(request: Request) -> Response:
    from pollama.api.ollama.quantize import requested_type, run_quantize
    from pollama.store.progress import Progress, reports_from

    body = await parse_body(request, CreateRequest)
    state = _state(request)
    target = requested_type(body.quantize, body.quantization)
    arguments = await _create_arguments(state, body)
    job = await _quantize_job(state, arguments, target) if target else None

    async def work(report: Callable[[Progress], None]) -> None:
        def status(text: str) -> None:
            report(Progress(text))

        # Blobs, quantized weights and manifest under one hold: no prune in between.
        async with state.store.lock.held(on_wait=lambda: status(WAITING)):
            args = arguments
            if job is not None:  # the quantized copy becomes the model's weights
                args = {**arguments, "model_blob": await run_quantize(job, state.store, report)}
            await to_thread_to_the_end(state.store.create_model, **args, progress=status)

    return await _progress_response(reports_from(work), body.stream, request)


async def _quantize_job(state: ServerState, arguments: dict[str, Any], target: str) -> QuantizeJob:
    """The quantize job for the weights the create names (BadRequest if they are not F16,
    BF16 or F32)."""
    from pollama.api.ollama.quantize import plan_quantize

    if arguments.get("model_blob"):
        source = state.store.blob_path(arguments["model_blob"])
    else:
        base = await asyncio.to_thread(state.store.resolve, arguments["from_model"])
        source = base.model_path
    return await plan_quantize(source, target)


async def _create_arguments(state: ServerState, body: CreateRequest) -> dict[str, Any]:
    """Store.create_model's arguments, every one checked: a bad request fails here, with
    a status, before the progress stream begins."""
    name = ModelName.parse(body.model)
    store = state.store
    arguments: dict[str, Any] = {}
    adapter_files = _uploaded(store, body.adapters or {})
    if adapter_files:
        await asyncio.to_thread(_classify, store, adapter_files)  # each must be a GGUF
    adapters = [digest for _, digest in adapter_files]
    if body.from_:
        _, base = await state.model(body.from_)
        arguments["from_model"] = base.name
        arguments["projector_blob"] = await _projector_beside(store, body.files or {})
        weights = (base.model_path, body.from_)
    elif body.files:
        kinds = await asyncio.to_thread(_classify, store, _uploaded(store, body.files))
        models, projectors = kinds["model"], kinds["projector"]
        if len(models) != 1:
            found = "no model file" if not models else f"{len(models)} model files"
            raise BadRequest(f"files must hold exactly one GGUF model, not {found}")
        if len(projectors) > 1:
            raise BadRequest(f"files hold {len(projectors)} projectors; at most one is supported")
        arguments["model_blob"] = models[0]
        arguments["projector_blob"] = projectors[0] if projectors else None
        adapters += kinds["adapter"]
        filename = next(n for n, d in body.files.items() if parse_digest(d) == models[0])
        weights = (store.blob_path(models[0]), filename)
    else:
        raise BadRequest("neither 'from' nor 'files' was specified")
    if body.draft:
        arguments["draft_blob"] = await _draft_blob(store, body.draft, weights)
    if body.template:
        check_template_size(body.template)
        ChatTemplate.from_modelfile(body.template)  # InvalidTemplate (400) if it cannot compile
    # Empty values mean "not given", as in Ollama's API (Go's zero values).
    return {
        **arguments,
        "name": name,
        "template": body.template or None,
        "system": body.system or None,
        "parameters": _create_parameters(body.parameters) if body.parameters else None,
        "messages": [_stored_message(m) for m in body.messages] if body.messages else None,
        "license": body.license or None,
        "adapters": tuple(adapters),
    }


async def _projector_beside(store: Store, files: Mapping[str, str]) -> str | None:
    """With ``from``, files may add a vision projector (a Modelfile's second FROM), and
    nothing else."""
    if not files:
        return None
    kinds = await asyncio.to_thread(_classify, store, _uploaded(store, files))
    if kinds["model"] or kinds["adapter"] or len(kinds["projector"]) != 1:
        raise BadRequest("with 'from', files may only hold one vision projector")
    return kinds["projector"][0]


async def _draft_blob(
    store: Store, draft: str | Mapping[str, str], weights: tuple[Path, str]
) -> str:
    """The draft model's blob: a stored model's weights, or one uploaded GGUF model; its
    vocabulary checked against ``weights`` (the new model's file and how to name it)."""
    if isinstance(draft, str):
        stored = await asyncio.to_thread(store.resolve, draft)  # ModelNotFound: a 404
        layer = stored.manifest.layer_of(MODEL)
        assert layer is not None  # resolve refuses a manifest without one
        blob, path, label = layer.digest, stored.model_path, stored.name.display
    else:
        files = _uploaded(store, draft)
        if len(files) != 1:
            raise BadRequest(f"draft must name one GGUF file, not {len(files)}")
        kinds = await asyncio.to_thread(_classify, store, files)
        if not kinds["model"]:
            raise BadRequest(f"the draft {files[0][0]!r} is not a model (a projector or adapter)")
        label, blob = files[0]
        path = store.blob_path(blob)
    from pollama.store.vocab import check_draft

    await asyncio.to_thread(check_draft, path, label, *weights)
    return blob


def _uploaded(store: Store, files: Mapping[str, str]) -> list[tuple[str, str]]:
    """(filename, digest) pairs whose names are plain relative paths and whose blobs exist."""
    checked: list[tuple[str, str]] = []
    for filename, digest in files.items():
        _check_filename(filename)
        normal = parse_digest(digest)
        if not store.touch_blob(normal):  # touched: prune's grace covers the wait for the lock
            raise BadRequest(
                f"blob {normal} for {filename!r} not found: upload it first "
                f"(POST /api/blobs/{normal})"
            )
        checked.append((filename, normal))
    return checked


def _check_filename(filename: str) -> None:
    """Refuse absolute paths and ``..``: a file name must stay inside the model it names."""
    if not filename or "\x00" in filename:
        raise BadRequest(f"invalid file name {filename!r}")
    if filename.startswith(("/", "\\")) or _DRIVE.match(filename):
        raise BadRequest(f"invalid file name {filename!r}: absolute paths are not allowed")
    if ".." in re.split(r"[\\/]", filename):
        raise BadRequest(f"invalid file name {filename!r}: '..' is not allowed")


def _classify(store: Store, files: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Digests by what their GGUF holds: "model", "projector" or "adapter".
    InvalidModelFile (400), naming the file, for one that is not a GGUF."""
    kinds: dict[str, list[str]] = {"model": [], "projector": [], "adapter": []}
    for filename, digest in files:
        try:
            gguf = read_model(store.blob_path(digest))
        except InvalidModelFile as exc:
            raise InvalidModelFile(filename, exc.problem) from None
        kinds[_kind(gguf)].append(digest)
    return kinds


def _kind(gguf: GGUFModel) -> str:
    declared = gguf.get("general.type")
    if declared == "adapter":
        return "adapter"
    # A projector is a vision tower on its own: declared so, CLIP, or vision blocks only.
    vision_only = gguf.arch_get("vision.block_count") is not None and (
        gguf.arch_get("block_count") is None
    )
    if declared in ("projector", "mmproj") or gguf.architecture == "clip" or vision_only:
        return "projector"
    return "model"


def _create_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters checked as a Modelfile's are: an unknown name or a wrong type is a 400."""
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        if key not in OPTIONS:
            raise BadRequest(f"unknown parameter '{key}'")
        if key == "stop" and isinstance(value, str):
            value = [value]
        out.update(validate_options({key: value}))  # InvalidOption is a 400
    return out


def _stored_message(message: Message) -> dict[str, Any]:
    return message.model_dump(exclude_none=True)


# -- blobs ---------------------------------------------------------------------------------


# ``:path`` so that a digest holding slashes reaches the check (400), not the router (404).
@router.head("/api/blobs/{digest:path}")
async def blob_exists(digest: str, request: Request) -> Response:
    # Touched: the create that follows (Ollama's clients skip the upload of a blob that is
    # here) is within prune's grace.
    return Response(status_code=200 if _state(request).store.touch_blob(digest) else 404)


@router.post("/api/blobs/{digest:path}")
async def upload_blob(digest: str, request: Request) -> Response:
    """The raw body, streamed to a temporary file, verified, then renamed into place."""
    store = _state(request).store
    parse_digest(digest)  # 400 before a byte is read
    try:
        async with store.lock.held():
            created = await store.write_blob(digest, request.stream())
    except ClientDisconnect:  # write_blob has already removed its partial file
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return Response(status_code=201 if created else 200)


# -- copy, delete --------------------------------------------------------------------------


@router.post("/api/copy")
async def copy(request: Request) -> Response:
    body = await parse_body(request, CopyRequest)
    destination = ModelName.parse(body.destination)
    ModelName.parse(body.source)  # an invalid name is a 400 before anything is looked up
    state = _state(request)
    _, source = await state.model(body.source)  # imports the demo model when named
    async with state.store.lock.held():
        await to_thread_to_the_end(state.store.copy, source.name, destination)
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete(request: Request) -> Response:
    body = await parse_body(request, DeleteRequest)
    name = ModelName.parse(body.model)
    state = _state(request)
    stored = next((n for n, _ in state.store.names() if n.key == name.key), None)
    if stored is None:
        raise ModelNotFound(body.model)
    await state.scheduler.unload(stored.display)
    async with state.store.lock.held():
        await to_thread_to_the_end(state.store.delete, stored)
        if not state.settings.noprune:
            await to_thread_to_the_end(state.store.prune, keep_newer_than=PRUNE_GRACE)
    return Response(status_code=200)


# -- pull, push ----------------------------------------------------------------------------


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    body = await parse_body(request, PullRequest)
    from pollama.store import registry

    name = ModelName.parse(body.model)
    records = registry.pull(_state(request).store, name, insecure=body.insecure)
    return await _progress_response(records, body.stream)


@router.post("/api/push")
async def push(request: Request) -> Response:
    body = await parse_body(request, PushRequest)
    name = ModelName.parse(body.model)
    state = _state(request)
    from pollama.store import registry

    await state.model(body.model)  # 404 before streaming; imports the demo model when named
    records = registry.push(state.store, name, insecure=body.insecure)
    return await _progress_response(records, body.stream)


async def _progress_response(
    records: AsyncGenerator[Progress, None], stream: bool, request: Request | None = None
) -> Response:
    """NDJSON progress lines; with ``stream: false`` only the final one, as JSON. Given
    the ``request``, a client that leaves before the final line stops the work."""

    async def wire() -> AsyncIterator[ProgressResponse]:
        # Closing this (a client gone mid-stream) closes ``records``, which stops its work.
        async with aclosing(records):
            async for progress in records:
                yield ProgressResponse(**asdict(progress))

    async def last() -> ProgressResponse:
        final = ProgressResponse(status="success")
        async for record in wire():
            final = record
        return final

    if not stream:
        final = await (unless_client_leaves(request, last()) if request else last())
        if final is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return JSONResponse(json.loads(final.model_dump_json(exclude_none=True)))
    first, rest = await first_and_rest(wire())
    return StreamingResponse(ndjson(first, rest), media_type=NDJSON)
