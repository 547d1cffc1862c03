"""Every setting pollama reads from the environment, read once at start.

Variable names follow Ollama's where Ollama has one, so pollama is a drop-in
replacement. ``Settings.from_env()`` is called by the CLI entry points and the
result is passed down; nothing else reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pollama.units import parse_duration, parse_size

DEFAULT_PORT = 11434
FOREVER = float("inf")
DRAFT_MAX = 8
"""The longest draft a sequence verifies in one step (POLLAMA_SPECULATIVE=auto), and so
the bound of the ``draft_num_predict`` option."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    """Address the server binds to (OLLAMA_HOST, host part)."""
    port: int = DEFAULT_PORT
    """Port the server binds to (OLLAMA_HOST, port part)."""
    origins: tuple[str, ...] = ()
    """Extra CORS origins allowed (OLLAMA_ORIGINS, comma separated)."""
    models_dir: Path = field(default_factory=lambda: Path.home() / ".ollama" / "models")
    """Model store: manifests/ and blobs/ (OLLAMA_MODELS)."""
    keep_alive: float = 300.0
    """Seconds a model stays loaded after its last request; inf = forever (OLLAMA_KEEP_ALIVE)."""
    load_timeout: float = 300.0
    """Seconds a load may go without progress before it fails (OLLAMA_LOAD_TIMEOUT)."""
    context_length: int = 4096
    """Default num_ctx when neither Modelfile nor request sets one (OLLAMA_CONTEXT_LENGTH)."""
    num_parallel: int = 1
    """Concurrent requests per loaded model (OLLAMA_NUM_PARALLEL)."""
    max_loaded_models: int = 0
    """Models loaded at once; 0 = 3 per GPU, or 3 on CPU (OLLAMA_MAX_LOADED_MODELS)."""
    max_queue: int = 512
    """Requests allowed to wait before new ones get 503 (OLLAMA_MAX_QUEUE)."""
    debug: bool = False
    """Verbose logging (OLLAMA_DEBUG)."""
    flash_attention: bool | None = None
    """Flash attention: None = auto, True = on, False = off (OLLAMA_FLASH_ATTENTION)."""
    kv_cache_type: str = ""
    """KV cache element type: f16 (default), q8_0 or q4_0 (OLLAMA_KV_CACHE_TYPE)."""
    gpu_overhead: int = 0
    """Bytes of VRAM held back on every GPU (OLLAMA_GPU_OVERHEAD)."""
    sched_spread: bool = False
    """Spread layers over all GPUs instead of packing the fewest (OLLAMA_SCHED_SPREAD)."""
    noprune: bool = False
    """Keep unreferenced blobs at start (OLLAMA_NOPRUNE)."""
    simulated_gpus: str = ""
    """A simulated GPU inventory, e.g. ``cuda:24GiB,cuda:8GiB`` (POLLAMA_GPUS)."""
    cpu_extra_buffers: str = "auto"
    """llama.cpp's extra CPU buffer types (AMX, CPU_REPACK): ``auto`` uses them where the
    engine probe and every runner so far ran them safely, ``on`` always, ``off`` never
    (POLLAMA_CPU_EXTRA_BUFFERS)."""
    speculative: str = "auto"
    """Prompt-lookup speculative decoding: ``auto`` drafts where the context has text to
    copy and backs off where it has none, ``off`` never drafts (POLLAMA_SPECULATIVE)."""
    state_dir: Path | None = None
    """Where pollama keeps what it learnt about this machine (POLLAMA_STATE_DIR); None =
    the parent of the model store, beside ``logs/`` (see ``state_path``)."""
    max_tokens: int = 0
    """The most tokens one request may generate (POLLAMA_MAX_TOKENS); 0 = 10 × num_ctx, as
    Ollama caps a request without num_predict. It caps an explicit num_predict too."""
    shutdown_grace: float = 5.0
    """Seconds in-flight requests get after SIGTERM before they are cancelled and the runners
    stopped (POLLAMA_SHUTDOWN_GRACE)."""
    stall_timeout: float = 60.0
    """Seconds a runner may send nothing and not answer /health before it is taken for
    stalled (stopped, wedged), killed and replaced (POLLAMA_STALL_TIMEOUT; 0 = never)."""
    max_body: int = 64 * 1024 * 1024
    """Bytes of a request body; more is a 413 before it is read (POLLAMA_MAX_BODY)."""
    max_blob: int = 1024**4
    """Bytes of one blob upload, streamed to disk (POLLAMA_MAX_BLOB)."""
    max_connections: int = 1024
    """Open connections the server serves at once; more get a 503 (POLLAMA_MAX_CONNECTIONS)."""
    max_images: int = 16
    """Images one request may carry; more is a 400 (POLLAMA_MAX_IMAGES)."""
    max_image_pixels: int = 50_000_000
    """Pixels one image may have (width × height); more is a 400, and a decompression
    bomb never gets decoded (POLLAMA_MAX_IMAGE_PIXELS)."""
    api_keys: str = field(default="", repr=False)
    """Keys the server accepts, ``KEY`` or ``KEY:SCOPE`` comma separated (POLLAMA_API_KEYS);
    never shown (``repr=False``)."""
    api_keys_file: Path | None = None
    """A file of keys, one ``KEY[:SCOPE]`` a line, reloaded on SIGHUP (POLLAMA_API_KEYS_FILE)."""
    metrics_public: bool = False
    """Whether ``/metrics`` needs no key when keys are set (POLLAMA_METRICS_PUBLIC)."""
    read_only: bool = False
    """The store cannot change through the API (POLLAMA_READ_ONLY)."""
    client_api_key: str = field(default="", repr=False)
    """The key the CLI sends (POLLAMA_API_KEY, else OLLAMA_API_KEY)."""
    spare_runner: bool = True
    """Keep one runner process started and waiting for its model, so a load skips the
    runner's start and imports (POLLAMA_SPARE_RUNNER; CPU-only loads use it)."""
    num_thread: int = 0
    """llama.cpp threads of a load that names none (POLLAMA_NUM_THREAD; 0: one per
    physical core). A replica sharing its machine (``pollama ray``) sets its share."""
    test_crash: str = ""
    """Test-only (POLLAMA_TEST_CRASH): ``runner|probe:SIGNAL[:always]`` makes that process
    send itself SIGNAL before its first decode (``pollama.runner.crash_hook``)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        host, port = _host_port(env.get("OLLAMA_HOST", ""))
        models = env.get("OLLAMA_MODELS", "").strip()
        return cls(
            host=host,
            port=port,
            origins=tuple(o.strip() for o in env.get("OLLAMA_ORIGINS", "").split(",") if o.strip()),
            models_dir=Path(models).expanduser() if models else cls().models_dir,
            keep_alive=_keep_alive(env.get("OLLAMA_KEEP_ALIVE", "")),
            load_timeout=_positive_duration(env.get("OLLAMA_LOAD_TIMEOUT", ""), 300.0),
            context_length=_int(env, "OLLAMA_CONTEXT_LENGTH", 4096, minimum=1),
            num_parallel=_int(env, "OLLAMA_NUM_PARALLEL", 1, minimum=1),
            max_loaded_models=_int(env, "OLLAMA_MAX_LOADED_MODELS", 0, minimum=0),
            max_queue=_int(env, "OLLAMA_MAX_QUEUE", 512, minimum=1),
            debug=_bool(env.get("OLLAMA_DEBUG", "")) is True,
            flash_attention=_bool(env.get("OLLAMA_FLASH_ATTENTION", "")),
            kv_cache_type=env.get("OLLAMA_KV_CACHE_TYPE", "").strip().lower(),
            gpu_overhead=_size(env.get("OLLAMA_GPU_OVERHEAD", "")),
            sched_spread=_bool(env.get("OLLAMA_SCHED_SPREAD", "")) is True,
            noprune=_bool(env.get("OLLAMA_NOPRUNE", "")) is True,
            simulated_gpus=env.get("POLLAMA_GPUS", "").strip(),
            cpu_extra_buffers=_choice(
                env.get("POLLAMA_CPU_EXTRA_BUFFERS", ""), ("auto", "on", "off"), "auto"
            ),
            speculative=_choice(env.get("POLLAMA_SPECULATIVE", ""), ("auto", "off"), "auto"),
            state_dir=Path(state).expanduser() if (state := env.get("POLLAMA_STATE_DIR")) else None,
            max_tokens=_int(env, "POLLAMA_MAX_TOKENS", 0, minimum=0),
            shutdown_grace=_seconds(env.get("POLLAMA_SHUTDOWN_GRACE", ""), 5.0),
            stall_timeout=_seconds(env.get("POLLAMA_STALL_TIMEOUT", ""), 60.0),
            max_body=_size(env.get("POLLAMA_MAX_BODY", "")) or cls.max_body,
            max_blob=_size(env.get("POLLAMA_MAX_BLOB", "")) or cls.max_blob,
            max_connections=_int(env, "POLLAMA_MAX_CONNECTIONS", 1024, minimum=1),
            max_images=_int(env, "POLLAMA_MAX_IMAGES", 16, minimum=0),
            max_image_pixels=_int(env, "POLLAMA_MAX_IMAGE_PIXELS", 50_000_000, minimum=1),
            api_keys=env.get("POLLAMA_API_KEYS", "").strip(),
            api_keys_file=Path(keys).expanduser()
            if (keys := env.get("POLLAMA_API_KEYS_FILE", "").strip())
            else None,
            metrics_public=_bool(env.get("POLLAMA_METRICS_PUBLIC", "")) is True,
            read_only=_bool(env.get("POLLAMA_READ_ONLY", "")) is True,
            client_api_key=(env.get("POLLAMA_API_KEY") or env.get("OLLAMA_API_KEY") or "").strip(),
            spare_runner=_bool(env.get("POLLAMA_SPARE_RUNNER", "")) is not False,
            num_thread=_int(env, "POLLAMA_NUM_THREAD", 0, minimum=0),
            test_crash=env.get("POLLAMA_TEST_CRASH", "").strip(),
        )

    @property
    def draft_max(self) -> int:
        """Draft tokens a sequence may verify per step; 0 = no speculation."""
        return DRAFT_MAX if self.speculative == "auto" else 0

    @property
    def state_path(self) -> Path:
        """The state directory: POLLAMA_STATE_DIR, else beside the model store (``~/.ollama``)."""
        return self.state_dir if self.state_dir is not None else self.models_dir.parent

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def _host_port(raw: str) -> tuple[str, int]:
    raw = raw.strip().strip('"').strip("'")
    for scheme in ("http://", "https://"):
        if raw.startswith(scheme):
            raw = raw[len(scheme) :]
    raw = raw.split("/", 1)[0]
    if not raw:
        return "127.0.0.1", DEFAULT_PORT
    if raw.startswith("["):  # [::1]:port
        host, _, rest = raw[1:].partition("]")
        port = rest.lstrip(":")
    elif raw.count(":") == 1:
        host, port = raw.split(":")
    else:
        host, port = raw, ""
    try:
        return host or "127.0.0.1", int(port) if port else DEFAULT_PORT
    except ValueError:
        return host or "127.0.0.1", DEFAULT_PORT


def _bool(raw: str) -> bool | None:
    value = raw.strip().lower()
    if value in ("1", "true", "t", "yes", "y", "on"):
        return True
    if value in ("0", "false", "f", "no", "n", "off"):
        return False
    return None


def _choice(raw: str, choices: tuple[str, ...], default: str) -> str:
    value = raw.strip().lower()
    if value in ("1", "true", "yes"):
        value = "on"
    elif value in ("0", "false", "no"):
        value = "off"
    return value if value in choices else default


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    try:
        value = int(raw)
    except ValueError:
        return default
    return value if value >= minimum else default


def _keep_alive(raw: str) -> float:
    raw = raw.strip()
    if not raw:
        return 300.0
    try:
        seconds = parse_duration(raw)
    except ValueError:
        try:
            seconds = float(raw)
        except ValueError:
            return 300.0
    return FOREVER if seconds < 0 else seconds


def _seconds(raw: str, default: float) -> float:
    """A duration (``10s``, ``1m``) or a number of seconds, at least 0."""
    raw = raw.strip()
    if not raw:
        return default
    try:
        seconds = parse_duration(raw)
    except ValueError:
        try:
            seconds = float(raw)
        except ValueError:
            return default
    return max(seconds, 0.0)


def _positive_duration(raw: str, default: float) -> float:
    raw = raw.strip()
    if not raw:
        return default
    try:
        seconds = parse_duration(raw)
    except ValueError:
        try:
            seconds = float(raw)
        except ValueError:
            return default
    return FOREVER if seconds <= 0 else seconds


def _size(raw: str) -> int:
    raw = raw.strip()
    if not raw:
        return 0
    try:
        return parse_size(raw)
    except ValueError:
        return 0
