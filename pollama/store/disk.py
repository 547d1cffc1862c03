"""The model store, in Ollama's on-disk layout so an existing ``~/.ollama/models`` works.

    <root>/manifests/<host>/<namespace>/<model>/<tag>   OCI manifest v2 (JSON)
    <root>/blobs/sha256-<hex>                           config and layer blobs

Names are matched case-insensitively, as Ollama does: a name that differs only
in case from a stored one reads, replaces and deletes that one. Every path is
built from a validated ``ModelName`` or digest, so nothing a client sends can
point outside the store.

Writes are serialised across processes by the store's lock (``store.lock``): the
callers that write (the API's write routes, start-up's cleanup) hold it for the whole
write; the methods here do not take it, and reads never do.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pollama.demo import DEMO_MODEL_NAME, demo_model
from pollama.errors import InvalidModelName, ModelNotFound
from pollama.ggufmeta import read_model
from pollama.store.blobs import BLOB_FILE, TEMP_PREFIX, BlobStore, atomic_write
from pollama.store.create import LayerPlan, plan_layers
from pollama.store.lock import StoreLock
from pollama.store.manifest import (
    ADAPTER,
    CONFIG_MEDIA_TYPE,
    DRAFT,
    LICENSE,
    MESSAGES,
    MODEL,
    PARAMS,
    PROJECTOR,
    SYSTEM,
    TEMPLATE,
    CorruptManifest,
    Layer,
    Manifest,
    config_bytes,
    parse_manifest,
)
from pollama.store.names import ModelName
from pollama.store.resolved import ModelEntry, ResolvedModel

log = logging.getLogger(__name__)

# Text layers are small (a template, a system prompt); a manifest that points one at a
# multi-gigabyte blob is corrupt, and reading it whole would exhaust memory.
MAX_TEXT_LAYER = 64 << 20

Progress = Callable[[str], None]

PRUNE_GRACE = 300.0
"""Seconds a new (or newly touched) unreferenced blob survives a prune: a client uploads
blobs first and creates the model from them in a later request, and another server may
prune in between (after a delete, or at its start-up)."""


@dataclass(frozen=True)
class _Found:
    name: ModelName  # as stored on disk, which may differ in case from the one asked for
    path: Path
    data: bytes
    manifest: Manifest
    modified_at: datetime

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def where(self) -> str:
        """How errors name this manifest."""
        return f"{self.name.display} ({self.path})"


class Store(BlobStore):
    """A model store rooted at ``root`` (``OLLAMA_MODELS``); directories are made on write."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.manifests_dir = self.root / "manifests"
        self.lock = StoreLock(self.root)
        """Held by every write, in whichever process shares this store."""

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.manifest_parts())

    # -- reading -----------------------------------------------------------------------------

    def names(self) -> Iterator[tuple[ModelName, Path]]:
        """Every stored name with its manifest path. Entries that are not valid names
        (temp files, stray directories) are skipped."""
        for host in _subdirs(self.manifests_dir):
            for namespace in _subdirs(host):
                for model in _subdirs(namespace):
                    for tag in _entries(model):
                        if not tag.is_file():
                            continue
                        try:
                            name = ModelName(host.name, namespace.name, model.name, tag.name)
                        except InvalidModelName:
                            continue
                        yield name, tag

    def read_manifest(self, name: ModelName | str) -> Manifest | None:
        """The manifest stored under ``name`` (any case); None if there is none;
        CorruptManifest if it cannot be read."""
        found = self._find(_as_name(name))
        return found.manifest if found else None

    def list_models(self) -> list[ModelEntry]:
        """Every readable model, newest first; unreadable manifests are logged and skipped."""
        entries: list[ModelEntry] = []
        for name, path in self.names():
            try:
                found = self._load(name, path)
            except (CorruptManifest, OSError) as exc:
                log.warning("skipping model %s: %s", name, exc)
                continue
            entries.append(
                ModelEntry(
                    name=name,
                    manifest=found.manifest,
                    digest=found.digest,
                    size=found.manifest.size,
                    modified_at=found.modified_at,
                    config=self._config(found),
                )
            )
        entries.sort(key=lambda entry: entry.modified_at, reverse=True)
        return entries

    def resolve(self, name: ModelName | str) -> ResolvedModel:
        """The stored model's files and settings; ModelNotFound if there is no such model."""
        found = self._require(name)
        manifest, where = found.manifest, found.where
        model_layer = manifest.layer_of(MODEL)
        if model_layer is None:
            raise CorruptManifest(where, "it has no model layer")
        template, system = manifest.layer_of(TEMPLATE), manifest.layer_of(SYSTEM)
        draft = manifest.layer_of(DRAFT)
        params, messages = manifest.layer_of(PARAMS), manifest.layer_of(MESSAGES)
        parameters = self._json(params, where) if params else {}
        if not isinstance(parameters, dict):
            raise CorruptManifest(where, "its params layer is not a JSON object")
        message_list = self._json(messages, where) if messages else []
        if not isinstance(message_list, list):
            raise CorruptManifest(where, "its messages layer is not a JSON list")
        return ResolvedModel(
            name=found.name,
            digest=found.digest,
            manifest=manifest,
            model_path=self._existing_blob(model_layer, where),
            projector_paths=tuple(
                self._existing_blob(layer, where) for layer in manifest.layers_of(PROJECTOR)
            ),
            adapter_paths=tuple(
                self._existing_blob(layer, where) for layer in manifest.layers_of(ADAPTER)
            ),
            draft_path=self._existing_blob(draft, where) if draft else None,
            template=self._text(template, where) if template else None,
            system=self._text(system, where) if system else None,
            parameters=parameters,
            messages=message_list,
            license=tuple(self._text(layer, where) for layer in manifest.layers_of(LICENSE)),
            config=self._config(found),
            modified_at=found.modified_at,
            size=manifest.size,
        )

    # -- writing -----------------------------------------------------------------------------

    def write_manifest(self, name: ModelName, manifest: Manifest) -> str:
        """Store ``manifest`` under ``name`` (or the stored name it matches in any case)
        atomically; returns its hex digest. Every blob it names must already exist."""
        return self.write_manifest_bytes(name, manifest.to_bytes())

    def copy(self, source: ModelName | str, destination: ModelName | str) -> None:
        """Give a model a second name: the manifest bytes are copied, so the digest is kept."""
        found = self._require(source)
        self.write_manifest_bytes(_as_name(destination), found.data)

    def delete(self, name: ModelName | str) -> None:
        """Remove a model's manifest (its blobs stay until ``prune``); ModelNotFound if absent."""
        found = self._require(name)
        found.path.unlink()
        self._remove_empty_dirs(found.path.parent)

    def remove_leftovers(self) -> list[str]:
        """What a write cut short leaves (by a crash, SIGKILL, power loss): partial blobs
        and manifests written half-way. Run at start-up, whatever OLLAMA_NOPRUNE says:
        these are never models. Returns the removed file names."""
        removed = self.remove_stale_partials()
        for path in sorted(self.manifests_dir.rglob(f"{TEMP_PREFIX}*")):
            path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed

    def prune(self, *, keep_newer_than: float = 0.0) -> list[str]:
        """Remove blobs no manifest references and partial files no write here owns.

        Returns the removed file names. Blobs modified less than ``keep_newer_than``
        seconds ago are kept, so a blob uploaded for a create that has not yet written
        its manifest survives a prune run meanwhile. If any manifest cannot be read, no
        blob is removed: its references are unknown.
        """
        removed = self.remove_leftovers()
        referenced: set[str] = set()
        for name, path in list(self.names()):
            try:
                referenced |= self._load(name, path).manifest.digests()
            except (CorruptManifest, OSError) as exc:
                log.warning("not pruning blobs: manifest of %s is unreadable: %s", name, exc)
                return removed
        horizon = datetime.now(UTC).timestamp() - keep_newer_than
        for path in _entries(self.blobs_dir):
            if BLOB_FILE.fullmatch(path.name) is None:
                continue
            if "sha256:" + path.name.removeprefix("sha256-") in referenced:
                continue
            try:
                if keep_newer_than > 0 and path.stat().st_mtime > horizon:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path.name)
        for host in _subdirs(self.manifests_dir):
            for namespace in _subdirs(host):
                for model in _subdirs(namespace):
                    self._remove_empty_dirs(model)
        return removed

    def create_model(
        self,
        name: ModelName,
        *,
        model_blob: str | None = None,
        projector_blob: str | None = None,
        draft_blob: str | None = None,
        from_model: ModelName | None = None,
        template: str | None = None,
        system: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        license: str | Sequence[str] | None = None,
        adapters: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> str:
        """Create (or replace) ``name``; returns the new manifest's hex digest.

        The weights come from either ``model_blob`` (the digest of an uploaded GGUF,
        checked with read_model: InvalidModelFile if it is not one) or ``from_model``
        (an existing model: ModelNotFound if absent), or both: the existing model's layers
        with the blob as its weights (a quantized copy). For each of template, system,
        parameters, messages and license: None keeps the base model's layer, an empty
        value removes it, anything else replaces it; parameters are merged over the
        base model's. ``draft_blob`` (a GGUF's digest) becomes the DRAFT layer: the draft
        model, whose vocabulary must match the weights' (DraftVocabularyMismatch if not).
        ``progress`` gets Ollama's status lines.
        """
        report = progress or _ignore
        base: _Found | None = None
        if from_model is not None:
            base = self._require(from_model)
        plan = plan_layers(
            self,
            model_blob=model_blob,
            projector_blob=projector_blob,
            draft_blob=draft_blob,
            base=(base.manifest, self._config(base)) if base else None,
            base_params=self._base_params(base),
            template=template,
            system=system,
            parameters=parameters,
            messages=messages,
            license=license,
            adapters=adapters,
            report=report,
        )
        return self._commit_plan(name, plan, report)

    def import_gguf(
        self,
        name: ModelName,
        path: Path,
        progress: Progress | None = None,
        *,
        digest: str | None = None,
    ) -> str:
        """Create ``name`` from a local GGUF file (copied into the store; linked when its
        ``digest`` is known already); returns the digest."""
        read_model(path)  # fail before copying gigabytes of something that is not a model
        blob = self.link_file(path, digest) if digest else self.add_file(path)
        return self.create_model(name, model_blob=blob, progress=progress)

    # -- internals ---------------------------------------------------------------------------

    def _commit_plan(self, name: ModelName, plan: LayerPlan, report: Progress) -> str:
        for layer in plan.layers:
            verb = "creating new" if layer.digest in plan.created else "using existing"
            report(f"{verb} layer {layer.digest}")
        config = config_bytes(plan.config)
        config_layer = Layer(CONFIG_MEDIA_TYPE, self.write_blob_bytes(config), len(config))
        report("writing manifest")
        digest = self.write_manifest(name, Manifest(config=config_layer, layers=plan.layers))
        report("success")
        return digest

    def _base_params(self, base: _Found | None) -> Mapping[str, Any]:
        layer = base.manifest.layer_of(PARAMS) if base else None
        if base is None or layer is None:
            return {}
        params = self._json(layer, base.where)
        if not isinstance(params, dict):
            raise CorruptManifest(base.where, "its params layer is not a JSON object")
        return params

    def write_manifest_bytes(self, name: ModelName, data: bytes) -> str:
        """Store manifest bytes exactly as given (a pulled manifest keeps its registry
        digest); returns their hex digest. Every blob they name must already exist."""
        existing = self._locate(name)
        # Writing to the stored spelling keeps one model per case-insensitive name.
        path = existing[1] if existing else self.manifest_path(name)
        atomic_write(path, data)
        return hashlib.sha256(data).hexdigest()

    def _require(self, name: ModelName | str) -> _Found:
        parsed = _as_name(name)
        found = self._find(parsed)
        if found is None:
            raise ModelNotFound(name if isinstance(name, str) else parsed.display)
        return found

    def _locate(self, name: ModelName) -> tuple[ModelName, Path] | None:
        """The stored spelling of ``name`` and its manifest path, matching case-insensitively."""
        exact = self.manifest_path(name)
        if exact.is_file():
            return name, exact
        return next(((n, p) for n, p in self.names() if n.key == name.key), None)

    def _find(self, name: ModelName) -> _Found | None:
        located = self._locate(name)
        if located is None:
            return None
        try:
            return self._load(*located)
        except FileNotFoundError:
            return None  # deleted while we looked

    def _load(self, name: ModelName, path: Path) -> _Found:
        data = path.read_bytes()
        manifest = parse_manifest(data, f"{name.display} ({path})")
        return _Found(name, path, data, manifest, _mtime(path))

    def _config(self, found: _Found) -> Mapping[str, Any]:
        """The config blob; {} (with a warning) when unreadable, since it only describes the
        model (family, size, quantization) and running it does not need it."""
        try:
            config = self._json(found.manifest.config, found.where)
        except (CorruptManifest, OSError) as exc:
            log.warning("%s", exc)
            return {}
        if not isinstance(config, dict):
            log.warning("config blob of %s is not a JSON object", found.where)
            return {}
        return config

    def _existing_blob(self, layer: Layer, where: str) -> Path:
        path = self.blob_path(layer.digest)
        if not path.is_file():
            raise CorruptManifest(where, f"blob {layer.digest} is missing")
        return path

    def _read_small(self, layer: Layer, where: str) -> bytes:
        path = self._existing_blob(layer, where)
        with open(path, "rb") as f:
            data = f.read(MAX_TEXT_LAYER + 1)
        if len(data) > MAX_TEXT_LAYER:
            raise CorruptManifest(where, f"{layer.media_type} blob {layer.digest} is too large")
        return data

    def _text(self, layer: Layer, where: str) -> str:
        try:
            return self._read_small(layer, where).decode()
        except UnicodeDecodeError:
            raise CorruptManifest(where, f"blob {layer.digest} is not UTF-8 text") from None

    def _json(self, layer: Layer, where: str) -> Any:
        try:
            return json.loads(self._read_small(layer, where))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CorruptManifest(where, f"blob {layer.digest} is not JSON") from None

    def _remove_empty_dirs(self, directory: Path) -> None:
        """Remove ``directory`` and its parents while empty, stopping at ``manifests/``."""
        while directory != self.manifests_dir and self.manifests_dir in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or already gone): its parents are not empty either
            directory = directory.parent


def ensure_demo(store: Store) -> ModelName:
    """The bundled demo model's name, importing it into ``store`` on first use (a write:
    the caller holds the store's lock when ``demo_missing`` says it will import)."""
    name = ModelName.parse(f"{DEMO_MODEL_NAME}:latest")
    if store.read_manifest(name) is None:
        path, digest = demo_model()
        store.import_gguf(name, path, digest=digest)
    return name


def demo_missing(store: Store) -> bool:
    """Whether ``ensure_demo`` would import the demo model (it is not stored yet)."""
    return store.read_manifest(ModelName.parse(f"{DEMO_MODEL_NAME}:latest")) is None


def _ignore(_status: str) -> None:
    pass


def _as_name(name: ModelName | str) -> ModelName:
    return name if isinstance(name, ModelName) else ModelName.parse(name)


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)


def _entries(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _subdirs(directory: Path) -> list[Path]:
    return [path for path in _entries(directory) if path.is_dir()]
