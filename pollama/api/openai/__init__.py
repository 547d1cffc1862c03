"""OpenAI's API (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/models``, ``/v1/responses``): wire types, request translation, replies, routes."""
