"""The exceptions pollama raises, as one tree.

    PollamaError                    anything pollama reports to a user as is
    ├── InvalidModelFile            a model file that is not a usable GGUF
    ├── BadRequest                  a request body that is missing, not JSON, or malformed
    │   ├── InvalidOption           an option or PARAMETER unknown, or of the wrong type
    │   ├── InvalidKeepAlive        a keep_alive that is neither seconds nor a duration
    │   └── DraftVocabularyMismatch a DRAFT model whose vocabulary is not the model's
    ├── ModelNotFound               a name or path that names no model
    ├── InvalidModelName            a name Ollama's rules reject (or a traversal attempt)
    ├── InvalidDigest               a blob digest that is not sha256:<64 hex>
    ├── DigestMismatch              uploaded bytes whose sha256 is not the named digest
    ├── CorruptManifest             a stored manifest (or its blobs) that cannot be read
    ├── InvalidModelfile            a Modelfile that does not parse (names the line)
    ├── InvalidTemplate             a chat template that fails to compile or render
    ├── InsertUnsupported           a ``suffix`` for a model whose template cannot insert
    ├── QueueFull                   too many requests waiting (HTTP 503)
    ├── PayloadTooLarge             a request body over its limit (HTTP 413)
    ├── StorageFull                 the model store's disk is full (HTTP 507)
    ├── InvalidDeviceSpec           a simulated-GPU spec that does not parse
    ├── RegistryError               a registry that cannot be reached or refuses a pull/push
    ├── QuantizeFailed              llama.cpp's quantizer failed or was killed (HTTP 500)
    ├── InvalidFormat               a ``format`` that is neither "json" nor a JSON schema
    │   └── UnsupportedSchema       a schema using a keyword no grammar can enforce
    ├── RunnerError                 the runner failed this request (it may still be alive)
    │   ├── RunnerHTTPError         the runner refused a request; keeps its HTTP status
    │   └── RunnerDied              the runner process is gone; carries its last error line
    │       └── EngineCrashed       the engine's code killed it (SIGILL, SIGSEGV, SIGBUS),
    │                               explained in words with the rebuild that avoids it
    ├── EngineUnusable              this llama.cpp build is known to crash on this CPU
    └── LoadError                   a model cannot be placed or loaded
        ├── LoadRequiredFull        it fits only with layers on the CPU, and the
        │                           caller asked for all-GPU (the scheduler may
        │                           evict another model and retry)
        └── InsufficientMemory      not even CPU RAM + swap can hold it

Each message is written for the person who will read it; callers show
``str(exc)`` without decoration. HTTP statuses are mapped from these types in
one place in ``pollama.api``.
"""

from __future__ import annotations


class PollamaError(Exception):
    """Base for every error pollama reports to a user."""


class InvalidModelFile(PollamaError):
    """A file that is not a GGUF model pollama can read."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"invalid model file {path}: {problem}")
        self.path = path
        self.problem = problem


class BadRequest(PollamaError):
    """A request that cannot be served as sent (HTTP 400); the message says why."""


class InvalidOption(BadRequest):
    """An option or PARAMETER whose key is unknown or whose value has the wrong type."""


class InvalidKeepAlive(BadRequest):
    """A ``keep_alive`` that is neither a number of seconds nor a duration."""


class DraftVocabularyMismatch(BadRequest):
    """A draft model (Modelfile ``DRAFT``) whose tokens are not the model's: its drafts
    would be token ids that mean something else to the model it drafts for."""

    def __init__(self, draft: str, model: str, difference: str) -> None:
        super().__init__(
            f'draft model "{draft}" does not share a vocabulary with "{model}": {difference}'
        )
        self.difference = difference


class ModelNotFound(PollamaError):
    """A model name or path that does not resolve to a model."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name


class InvalidModelName(PollamaError):
    """A model name that is not ``[host/][namespace/]model[:tag]`` by Ollama's rules."""

    def __init__(self, name: str, problem: str = "") -> None:
        super().__init__(f"invalid model name {name!r}" + (f": {problem}" if problem else ""))
        self.name = name


class InvalidDigest(PollamaError):
    """A digest that is not ``sha256:`` (or ``sha256-``) followed by 64 hex digits."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
        self.digest = digest


class DigestMismatch(PollamaError):
    """Uploaded bytes that do not hash to the digest they were sent under."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class CorruptManifest(PollamaError):
    """A manifest (or the blobs it names) that cannot be read as a model.

    A server-side fault (HTTP 500): the store on disk is damaged, not the request.
    """

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"corrupt model manifest {where}: {problem}")
        self.where = where
        self.problem = problem


class InvalidModelfile(PollamaError):
    """A Modelfile that does not parse; the message names the line."""


class InvalidTemplate(PollamaError):
    """A chat template that cannot be compiled or rendered."""


class InsertUnsupported(PollamaError):
    """A ``suffix`` (fill-in-the-middle) for a model whose template has no ``.Suffix``;
    the API answers 400, as Ollama does for a missing capability."""

    def __init__(self, model: str = "") -> None:
        super().__init__(f"{model or 'model'} does not support insert")
        self.model = model


class QueueFull(PollamaError):
    """More requests are waiting than OLLAMA_MAX_QUEUE allows."""

    def __init__(self) -> None:
        super().__init__("server busy, please try again.  maximum pending requests exceeded")


class PayloadTooLarge(PollamaError):
    """A request body over POLLAMA_MAX_BODY (or a blob over POLLAMA_MAX_BLOB): HTTP 413."""


class StorageFull(PollamaError):
    """A write to the model store failed for lack of space (ENOSPC, EDQUOT, EFBIG): HTTP
    507. Nothing partial is left: the write protocol removes what it began."""


class InvalidDeviceSpec(PollamaError):
    """A simulated device description that cannot be parsed."""


class RegistryError(PollamaError):
    """A pull or push that failed at the registry: unreachable, timed out, refused, or
    answered with something unusable (HTTP 502: the upstream failed). The message says
    which step failed, as ``pull model manifest: cannot reach registry.ollama.ai: ...``."""


class QuantizeFailed(PollamaError):
    """The quantizer child process failed or was killed; the message says how. A fault
    on the server's side (HTTP 500): the request was checked before it started."""


class InvalidFormat(PollamaError):
    """A ``format`` value that is neither "json", "", null, nor a JSON-schema object."""


class UnsupportedSchema(InvalidFormat):
    """A JSON schema that cannot be turned into a grammar; names the keyword.

    Structured output fails closed: we never fall back to unconstrained output.
    """

    def __init__(self, keyword: str, detail: str = "") -> None:
        message = f"unsupported JSON schema keyword {keyword!r}"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.keyword = keyword


class RunnerError(PollamaError):
    """A runner answered a request with an error; the runner itself may be fine."""


class RunnerHTTPError(RunnerError):
    """The runner refused or failed a request; ``status`` is its HTTP status
    (400 for a bad request the API layer passes on as a 400)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RunnerDied(RunnerError):
    """The runner process exited; the message carries its last error line."""


class EngineCrashed(RunnerDied):
    """The runner was killed by a signal its engine's code raised: an instruction the
    CPU cannot run (SIGILL) or a memory fault (SIGSEGV, SIGBUS)."""

    def __init__(self, message: str, *, signal: int, extra_buffers: bool, during_load: bool):
        super().__init__(message)
        self.signal = signal
        self.extra_buffers = extra_buffers
        """Whether the runner had llama.cpp's extra CPU buffer types on."""
        self.during_load = during_load


class EngineUnusable(PollamaError):
    """The llama.cpp build crashed on this CPU even without its optional kernels (a
    remembered verdict): loading again would only crash again until it is rebuilt."""


class LoadError(PollamaError):
    """A model cannot be placed on, or loaded into, the available memory."""


class LoadRequiredFull(LoadError):
    """The caller required the whole model on GPUs and it does not fit there."""

    def __init__(self, message: str = "unable to load full model on GPU") -> None:
        super().__init__(message)


class InsufficientMemory(LoadError):
    """The CPU share of a layout exceeds free system memory plus swap."""

    def __init__(self, required: int, available: int) -> None:
        from pollama.units import format_bytes

        super().__init__(
            f"model requires more system memory ({format_bytes(required)}) "
            f"than is available ({format_bytes(available)})"
        )
        self.required = required
        self.available = available
