"""Run under vLLM's environment: vLLM's `kimi_k2` tool parser on texts from stdin (a JSON list),
with the tokenizer of the checkpoint directory in argv[1]; prints one `K2PARSE <json>` line."""
import json
import sys

from transformers import AutoTokenizer
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.tool_parsers.kimi_k2_tool_parser import KimiK2ToolParser

tok = AutoTokenizer.from_pretrained(sys.argv[1])
out = []
for text in json.loads(sys.stdin.read()):
    parser = KimiK2ToolParser(tok)           # the constructor checks the section tokens are in the vocabulary
    req = ChatCompletionRequest(model="k2", messages=[{"role": "user", "content": "q"}],
                                tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    r = parser.extract_tool_calls(text, req)
    out.append({"tools_called": r.tools_called, "content": r.content,
                "calls": [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in r.tool_calls]})
print("K2PARSE " + json.dumps(out))
