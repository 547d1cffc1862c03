"""What ``pollama serve`` imports before it listens: nothing that only some requests use.

Every module the server imports at start is time before it answers its first request
(``bench coldstart``) and memory it keeps. These are left to the requests that need
them, by design; each entry says which.
"""

from __future__ import annotations

import json
import subprocess
import sys

# What serve imports before uvicorn listens (``cli/serve.py``), in a fresh interpreter.
SERVE_IMPORTS = """
import json, sys
from pollama.cli.serve import skip_unused_imports
skip_unused_imports()
import uvicorn
import pollama.api.app
from pollama.api.wiremodel import WireModel

def subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)

built = sorted(c.__qualname__ for c in subclasses(WireModel) if c.__pydantic_complete__)
print(json.dumps({"modules": sorted(sys.modules), "built": built}))
"""

NOT_AT_START = {
    "pollama.chat.grammar": "only a request with a format or a forced tool call",
    "pollama.chat.gotemplate": "only a model with a Modelfile (Go) template",
    "pollama.store.registry": "only pull and push",
    "pollama.api.ollama.quantize": "only a create that quantizes",
    "pollama.store.modelfile": "only /api/show and create",
    "pollama.api.anthropic.types": "only Anthropic's /v1/messages",
    "pollama.api.openai.responses_types": "only OpenAI's /v1/responses",
    "rich": "httpx's command line, which the server never runs (and the CLI's output)",
    "pygments": "httpx's command line",
    "typer": "the command line; serve skips it",
    "numpy": "the gguf package's reader and writer; the server reads GGUF headers itself",
    "PIL": "only a request with images",
}


def test_serve_imports_nothing_that_only_some_requests_use():
    done = subprocess.run(
        [sys.executable, "-c", SERVE_IMPORTS], capture_output=True, text=True, check=True
    )
    found = json.loads(done.stdout)
    loaded = set(found["modules"])
    early = {name: why for name, why in NOT_AT_START.items() if name in loaded}
    assert not early, f"imported at start, though needed by {early}"
    # The API's wire types build their validators at first use (api/wiremodel.py).
    assert found["built"] == []
