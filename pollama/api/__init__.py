"""The HTTP edge: one app (``app``) over three APIs (``ollama``, ``openai``, ``anthropic``)
that share one request path (``completion``, ``events``), one error mapping (``errors``),
the stream encoders, security, metrics and the server state the routes see."""
