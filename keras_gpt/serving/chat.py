"""Chat messages → the prompt text a fine-tuned model was trained on.

`keras_gpt.data.instructions` trains two record shapes, and a model answers
well only in the one it was fine-tuned with, so a server uses one template:

- `"instruction"` (`{"prompt", "response"}` records): one user message (after
  an optional system message, joined to it by a blank line) is written as
  `format_prompt(text)`, i.e. `### Instruction:\\n{text}\\n\\n### Response:\\n`.
- `"messages"` (`{"messages": [...]}` records): every turn as
  `<|{role}|>\\n{content}\\n`, then `<|assistant|>\\n` for the reply.

The answer ends at the tokenizer's `<|endoftext|>` (trained at the end of
every example) or where the template would start the next turn.

Which template a preset has: `--chat instruction|messages` on the command
line, else the `"chat_template"` entry of the preset's `metadata.json`; with
neither, chat completions are refused (the model was not fine-tuned to chat).
"""

from __future__ import annotations

import json
import os

from keras_gpt.data.instructions import format_prompt
from keras_gpt.serving.params import ApiError

CHAT_TEMPLATES = ("instruction", "messages")
ROLES = ("system", "user", "assistant")

#: Text that starts the template's next turn: the answer ends before it.
TEMPLATE_STOPS = {"instruction": ["### Instruction:"], "messages": ["\n<|"]}


def chat_template_of(directory: str | None, override: str | None = None) -> str | None:
    """The chat template of a preset: `override`, else its metadata's `"chat_template"`.

    Args:
        directory: the preset directory (`None`: not a local directory).
        override: `"instruction"`, `"messages"` or `None`.

    Returns:
        One of `CHAT_TEMPLATES`, or `None` (no chat).

    Example:
    >>> chat_template_of("runs/sft/best", override="instruction")
    'instruction'
    """
    if override is not None:
        if override not in CHAT_TEMPLATES:
            raise ValueError(f"chat template must be one of {CHAT_TEMPLATES}, got {override!r}.")
        return override
    path = os.path.join(directory, "metadata.json") if directory else None
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        metadata = json.load(f)
    template = metadata.get("chat_template") if isinstance(metadata, dict) else None
    if template is not None and template not in CHAT_TEMPLATES:
        raise ValueError(
            f"{path}: chat_template must be one of {CHAT_TEMPLATES}, got {template!r}."
        )
    return template


def parse_messages(body: dict) -> list[dict]:
    """`messages`: a non-empty list of `{"role", "content"}` with string content."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("`messages` must be a non-empty list of messages.", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(f"`{where}` must be an object with role and content.", param=where)
        if message.get("role") not in ROLES:
            raise ApiError(
                f"`{where}.role` must be one of {ROLES}, got {message.get('role')!r}.",
                param=f"{where}.role",
            )
        content = message.get("content")
        if isinstance(content, list):  # OpenAI's content parts: text parts only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(
                    f"`{where}.content` may hold only text parts.", param=f"{where}.content"
                )
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ApiError(f"`{where}.content` must be a string.", param=f"{where}.content")
        messages[i] = {"role": message["role"], "content": content}
    return messages


def render(messages: list[dict], template: str) -> str:
    """The prompt text for `messages` in `template` (one of `CHAT_TEMPLATES`).

    Args:
        messages: checked messages (`parse_messages`).
        template: `"instruction"` or `"messages"`.

    Example:
    >>> render([{"role": "user", "content": "Hi"}], "instruction")
    '### Instruction:\\nHi\\n\\n### Response:\\n'
    """
    if template == "messages":
        turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return turns + "<|assistant|>\n"
    roles = [m["role"] for m in messages]
    if roles not in (["user"], ["system", "user"]):
        raise ApiError(
            "This model's instruction template takes one user message, optionally after "
            f"one system message; got roles {roles}.",
            param="messages",
        )
    return format_prompt("\n\n".join(m["content"] for m in messages))
