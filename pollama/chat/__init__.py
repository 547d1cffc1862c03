"""From messages to a prompt and from a reply back to messages: chat templates (Jinja in a
sandbox, and the Go-template subset Ollama's Modelfiles use), prompt assembly, the reply
parser (thinking, tool calls), capabilities, and ``format`` → grammar."""
