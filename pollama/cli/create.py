"""``pollama create``: a model from a Modelfile, its local files uploaded as blobs first.

The Modelfile is parsed here, as Ollama's CLI does: a FROM, DRAFT or ADAPTER naming a
file (relative paths are relative to the Modelfile) is hashed, uploaded to
``/api/blobs/sha256:<hex>`` unless the server has it, and named by digest in
the ``/api/create`` request; a FROM that is not a file is a model name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Annotated, Any

import typer

from pollama.cli.client import Client, ClientError, ensure_server
from pollama.cli.common import exit_on_error
from pollama.cli.progress import ProgressDisplay
from pollama.settings import Settings
from pollama.store.modelfile import Modelfile, parse_modelfile

CHUNK = 1 << 20

Upload = Callable[[Path], str]
"""Puts a local file on the server; returns its digest (``sha256:<hex>``)."""


def create(
    model: Annotated[str, typer.Argument(help="The name of the new model.")],
    file: Annotated[
        Path, typer.Option("--file", "-f", help="The Modelfile (default: ./Modelfile).")
    ] = Path("Modelfile"),
    quantize: Annotated[
        str | None, typer.Option("--quantize", "-q", help="Quantize the model, e.g. q4_K_M.")
    ] = None,
) -> None:
    with exit_on_error():
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ClientError(f"cannot read the Modelfile {file}: {exc.strerror or exc}") from None
        modelfile = parse_modelfile(text)
        with ensure_server(Settings.from_env()) as client, ProgressDisplay() as progress:
            body = create_request(
                model, modelfile, file.resolve().parent, lambda path: upload(client, path, progress)
            )
            if quantize:
                body["quantize"] = quantize
            with closing(client.create(body)) as records:
                for record in records:
                    progress.update(record)


def create_request(model: str, modelfile: Modelfile, base: Path, put: Upload) -> dict[str, Any]:
    """The ``/api/create`` body for ``modelfile``, uploading its local files with ``put``."""
    body: dict[str, Any] = {"model": model}
    source = local_file(modelfile.from_, base)
    if source is None:
        body["from"] = modelfile.from_
    else:
        body["files"] = {source.name: put(source)}
    if modelfile.projector is not None:  # a second FROM: the vision projector's file
        projector = local_file(modelfile.projector, base, required=True)
        assert projector is not None
        body.setdefault("files", {})[projector.name] = put(projector)
    if modelfile.draft is not None:  # a stored model's name, or a GGUF file to upload
        draft = local_file(modelfile.draft, base)
        body["draft"] = {draft.name: put(draft)} if draft is not None else modelfile.draft
    adapters = {}
    for adapter in modelfile.adapters:
        path = local_file(adapter, base, required=True)
        assert path is not None
        adapters[path.name] = put(path)
    if adapters:
        body["adapters"] = adapters
    if modelfile.template is not None:
        body["template"] = modelfile.template
    if modelfile.system is not None:
        body["system"] = modelfile.system
    if modelfile.parameters:
        body["parameters"] = modelfile.parameter_dict()
    if modelfile.messages:
        body["messages"] = [{"role": r, "content": c} for r, c in modelfile.messages]
    if modelfile.licenses:
        body["license"] = list(modelfile.licenses)
    return body


def local_file(value: str, base: Path, *, required: bool = False) -> Path | None:
    """The file a FROM/ADAPTER value names, relative to ``base``; None when it is a model
    name; ClientError when it looks like a path that is not there, or is a directory."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if path.is_file():
        return path
    if path.is_dir():
        raise ClientError(f"{value} is a directory; pollama imports GGUF files only")
    looks_like_path = value.startswith((".", "/", "~")) or value.lower().endswith(".gguf")
    if required or looks_like_path:
        raise ClientError(f"no such file: {path}")
    return None


def upload(client: Client, path: Path, progress: ProgressDisplay) -> str:
    """Hash ``path`` and upload it unless the server has the blob; its digest."""
    size = path.stat().st_size
    digest = "sha256:" + sha256_file(path, progress.bar(f"hashing {path.name}", size))
    if not client.blob_exists(digest):
        advance = progress.bar(f"uploading {path.name}", size)
        client.upload_blob(digest, read_chunks(path, advance), size)
    return digest


def sha256_file(path: Path, advance: Callable[[int], None] | None = None) -> str:
    """The hex sha256 of a file, read a chunk at a time."""
    digest = hashlib.sha256()
    for chunk in read_chunks(path, advance):
        digest.update(chunk)
    return digest.hexdigest()


def read_chunks(path: Path, advance: Callable[[int], None] | None = None) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            if advance:
                advance(len(chunk))
            yield chunk
