"""K2's special tokens (K2_REFERENCE.md §4): the document separator, padding, and the chat and
tool-call tokens. The `tokenize` stage reserves all of them as single tokens of every k2
tokenizer, so post-training stages never re-tokenize."""
from __future__ import annotations

EOS = "<|endoftext|>"
PAD = "<|pad|>"

# roles: a message is <|im_ROLE|>name<|im_middle|>content<|im_end|>
IM_SYSTEM, IM_USER, IM_ASSISTANT = "<|im_system|>", "<|im_user|>", "<|im_assistant|>"
IM_MIDDLE, IM_END = "<|im_middle|>", "<|im_end|>"
# tool calls inside an assistant message
TOOL_CALLS_BEGIN, TOOL_CALLS_END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
TOOL_CALL_BEGIN, TOOL_CALL_ARGUMENT_BEGIN, TOOL_CALL_END = \
    "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"

# in vocabulary order (ids 0, 1, 2, … of every k2 tokenizer)
SPECIAL_TOKENS = [EOS, PAD, IM_SYSTEM, IM_USER, IM_ASSISTANT, IM_MIDDLE, IM_END,
                  TOOL_CALLS_BEGIN, TOOL_CALLS_END, TOOL_CALL_BEGIN, TOOL_CALL_ARGUMENT_BEGIN, TOOL_CALL_END]
