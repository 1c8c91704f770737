"""Pure text: no stage, store or model imports. Curation's word tokenizer (`words`), quality
filters (`filters`), exact + MinHash dedup (`dedup`), chunking for rewriting (`chunks`), and K2's
special tokens (`special_tokens`). K2's chat format — rendering conversations with tool calls for
training and inference, and parsing model output back — is the next module here (`chat`)."""
