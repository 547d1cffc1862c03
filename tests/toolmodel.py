"""Models derived from the demo model whose templates make the tool and thinking paths
testable: SmolLM2's ChatML, plus Hermes-style ``<tool_call>`` blocks and ``<think>`` tags.

The demo model is too small to call tools or close a thinking block on its own, so
tests force the paths the server owns: ``tool_choice`` required (a grammar writes the
call in the template's syntax) and a thinking budget (the runner closes the block).
"""

from __future__ import annotations

from typing import Any

import httpx

TOOL_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}You can call these tools. To call one, answer with
<tool_call>{"name": ..., "arguments": {...}}</tool_call>.
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}
{%- elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{% if message.reasoning_content %}<think>
{{ message.reasoning_content }}
</think>

{% endif %}{{ message.content }}
{%- if message.tool_calls %}{% for call in message.tool_calls %}
<tool_call>
{{ {"name": call.function.name, "arguments": call.function.arguments} | tojson }}
</tool_call>{% endfor %}{% endif %}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}


def create_tool_model(base_url: str, name: str = "smollm2-tools") -> str:
    """Create ``name`` from the demo model with TOOL_TEMPLATE; returns the name."""
    response = httpx.post(
        f"{base_url}/api/create",
        json={"model": name, "from": "smollm2", "template": TOOL_TEMPLATE, "stream": False},
        timeout=300,
    )
    response.raise_for_status()
    return name
