"""Arrow schemas of document shards (the output of `ingest`, the input of curation)."""
import pyarrow as pa

DOCUMENT_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),       # sha256(text)[:32]: stable, content-addressed
    pa.field("text", pa.large_string(), nullable=False),  # NFC, control characters removed
    pa.field("source", pa.string(), nullable=False),   # file or object the record came from
    pa.field("locator", pa.string(), nullable=False),  # line / row within that source
    pa.field("n_chars", pa.int64(), nullable=False),
    pa.field("meta", pa.string(), nullable=False),     # JSON object: the record's other fields
])

# `curate` output: the document columns plus its domain and exact-dedup key
CURATED_SCHEMA = pa.schema(list(DOCUMENT_SCHEMA) + [
    pa.field("domain", pa.string(), nullable=False),     # prose | code | math
    pa.field("exact_key", pa.string(), nullable=False),  # 64-bit hash of the normalised text, hex
])

REJECT_SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),
    pa.field("locator", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),   # e.g. invalid_json, missing_text, empty_text
    pa.field("detail", pa.string(), nullable=False),   # human-readable specifics
    pa.field("raw", pa.large_string(), nullable=False),  # the record as read, so nothing is lost
])
