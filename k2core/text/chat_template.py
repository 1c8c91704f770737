"""K2's chat format as a Jinja chat template, for ``tokenizer_config.json``: what transformers'
``apply_chat_template`` and vLLM's chat endpoint render from a k2 checkpoint. It renders byte for
byte what :func:`k2core.text.chat.render` renders (tests/k2core/text/test_chat.py, and on every
synthesized trajectory). Its own module so that the tokenize stage's version changes only with the
template, not with every edit of the renderer or parser."""
from __future__ import annotations

from k2core.text.special_tokens import (IM_ASSISTANT, IM_END, IM_MIDDLE, IM_SYSTEM, IM_USER, TOOL_CALL_ARGUMENT_BEGIN,
                                        TOOL_CALL_BEGIN, TOOL_CALL_END, TOOL_CALLS_BEGIN, TOOL_CALLS_END)

DEFAULT_SYSTEM = "You are a helpful assistant"
GENERATION_PROMPT = f"{IM_ASSISTANT}assistant{IM_MIDDLE}"

# The same layout as `render`, for `tokenizer_config.json` (transformers' apply_chat_template,
# vLLM's chat endpoint). transformers' `tojson` is json.dumps(ensure_ascii=False); sort_keys=True
# sorts every nested level, as deep_sort does. Written without whitespace between tags: the
# template's text is exactly the tokens' text.
_TEXT = ("{%- macro k2_text(c) -%}{%- if c is string -%}{{ c }}{%- elif c is iterable and c is not mapping -%}"
         "{%- for p in c -%}{%- if p is mapping and p.type == 'text' -%}{{ p.text }}{%- endif -%}{%- endfor -%}"
         "{%- endif -%}{%- endmacro -%}")
CHAT_TEMPLATE = (
    _TEXT
    + "{%- if tools -%}" + IM_SYSTEM + "tool_declare" + IM_MIDDLE + "{{ tools | tojson(sort_keys=True) }}" + IM_END
    + "{%- endif -%}"
    + "{%- if not messages or messages[0].role != 'system' -%}" + IM_SYSTEM + "system" + IM_MIDDLE + DEFAULT_SYSTEM
    + IM_END + "{%- endif -%}"
    + "{%- for m in messages -%}"
    + "{%- if m.role == 'user' -%}" + IM_USER + "{%- elif m.role == 'assistant' -%}" + IM_ASSISTANT
    + "{%- else -%}" + IM_SYSTEM + "{%- endif -%}"
    + "{{ m.name if m.name else m.role }}" + IM_MIDDLE
    + "{%- if m.role == 'tool' -%}## Return of {{ m.tool_call_id }}{{ '\\n' }}{{ k2_text(m.content) }}"
    + "{%- else -%}{{ k2_text(m.content) }}{%- endif -%}"
    + "{%- if m.role == 'assistant' and m.tool_calls -%}" + TOOL_CALLS_BEGIN
    + "{%- for tc in m.tool_calls -%}" + TOOL_CALL_BEGIN + "{{ tc.id }}" + TOOL_CALL_ARGUMENT_BEGIN
    + "{%- if tc.function.arguments is string -%}{{ tc.function.arguments }}"
    + "{%- else -%}{{ tc.function.arguments | tojson }}{%- endif -%}" + TOOL_CALL_END + "{%- endfor -%}"
    + TOOL_CALLS_END + "{%- endif -%}"
    + IM_END + "{%- endfor -%}"
    + "{%- if add_generation_prompt -%}" + GENERATION_PROMPT + "{%- endif -%}")
