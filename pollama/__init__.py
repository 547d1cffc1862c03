"""pollama: a local LLM server that speaks Ollama's and OpenAI's HTTP APIs."""

__version__ = "0.1.0"
