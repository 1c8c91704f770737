"""The `tokenize` stage: a byte-level BPE tokenizer trained on the curated corpus (the `tokenizers`
library) with K2's chat and tool-call tokens reserved, then packing into fixed-length token
sequences in memory-mappable shards plus a held-out validation shard.

Output artifact:
    tokenizer/tokenizer.json (+ tokenizer_config.json, special_tokens_map.json)  HF-loadable
    tokens/train-00000.bin …, tokens/val.bin    row-major [rows, seq_len] of uint16 / uint32 ids
    tokens/shards.parquet                        one row per shard: file, split, rows, tokens, max_id
    index.json                                   dtype, seq_len, vocab_size, shards, mixture used
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from k2core.artifacts import read_documents, read_input_rows
from k2core.errors import K2Error
from k2core.stage import StageContext
from k2core.text.special_tokens import EOS, PAD, SPECIAL_TOKENS



def _unit(doc_id: str, salt: str) -> float:
    """A stable number in [0, 1) per document: held-out split and fractional epochs."""
    h = hashlib.blake2b(f"{salt}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2 ** 64


def train_tokenizer(texts, vocab_size: int, min_frequency: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok, out: Path, seq_len: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    specials = {"eos_token": EOS, "pad_token": PAD, "bos_token": None,
                "additional_special_tokens": SPECIAL_TOKENS[2:]}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=1))
    from k2core.text.chat_template import CHAT_TEMPLATE

    # the chat template renders what k2core.text.chat renders (tested on every synthesized trajectory)
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": seq_len, "clean_up_tokenization_spaces": False,
         **specials, "chat_template": CHAT_TEMPLATE}, indent=1))


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg
    docs = read_documents(ctx)
    if not docs:
        raise K2Error("tokenize: the curated corpus is empty")
    mixture = {**{d["domain"]: 1.0 for d in docs}, **cfg.mixture}     # unlisted domains: one epoch
    val = [d for d in docs if _unit(d["id"], "val") < cfg.val_fraction]
    if cfg.val_fraction > 0 and not val:           # tiny corpora: hold out at least one document
        val = [min(docs, key=lambda d: _unit(d["id"], "val"))]
    val_ids = {d["id"] for d in val}
    train = [d for d in docs if d["id"] not in val_ids]

    with ctx.progress(total=None, desc="tokenize: training BPE") as bar:
        sample = train if cfg.max_train_docs is None else train[: cfg.max_train_docs]
        tok = train_tokenizer((d["text"] for d in sample), cfg.vocab_size, cfg.min_frequency)
        bar.update(1)
    vocab = tok.get_vocab_size()
    eos = tok.token_to_id(EOS)
    save_tokenizer(tok, ctx.workdir / "tokenizer", cfg.seq_len)
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32

    def stream(items: list[dict[str, Any]], epochs_by_domain: dict[str, float] | None) -> tuple[np.ndarray, int, int]:
        """Concatenated ids with an EOS after each document; epochs repeat (fractions by id hash).
        Also returns the document count and the expected length (counted separately)."""
        parts, n_docs, expected = [], 0, 0
        enc = tok.encode_batch([d["text"] for d in items])
        for d, e in zip(items, enc):
            reps = 1.0 if epochs_by_domain is None else epochs_by_domain[d["domain"]]
            whole = int(reps) + (1 if _unit(d["id"], "epoch") < reps - int(reps) else 0)
            for _ in range(whole):
                parts.append(np.asarray(e.ids + [eos], dtype=dtype))
                n_docs += 1
                expected += len(e.ids) + 1
        return (np.concatenate(parts) if parts else np.zeros(0, dtype)), n_docs, expected

    # accepted rephrasings of training documents (never of held-out ones), `rephrase_epochs` each
    reph = [r for r in read_input_rows(ctx, "rephrase", ["id", "text", "domain", "source_id"])
            if r["source_id"] not in val_ids]
    with ctx.progress(total=2, desc="tokenize: encoding + packing") as bar:
        train_ids, train_docs, expected = stream(train, mixture)
        if reph:
            r_ids, r_docs, r_expected = stream(reph, {r["domain"]: cfg.rephrase_epochs for r in reph})
            train_ids, train_docs, expected = np.concatenate([train_ids, r_ids]), train_docs + r_docs, \
                expected + r_expected
        bar.update(1)
        val_ids_arr, _, _ = stream(val, None)
        bar.update(1)
    # epochs > 1 repeat documents in place; shuffle whole rows with a fixed seed at training time
    L = cfg.seq_len
    out = ctx.workdir / "tokens"
    out.mkdir()
    shards = []
    rows = len(train_ids) // L
    train_rows = train_ids[: rows * L].reshape(rows, L)
    for i, start in enumerate(range(0, rows, cfg.shard_rows)):
        part = train_rows[start:start + cfg.shard_rows]
        name = f"train-{i:05d}.bin"
        part.tofile(out / name)
        shards.append({"file": f"tokens/{name}", "split": "train", "rows": int(part.shape[0]),
                       "tokens": int(part.size), "max_id": int(part.max())})
    vrows = len(val_ids_arr) // L
    if vrows:
        v = val_ids_arr[: vrows * L].reshape(vrows, L)
        v.tofile(out / "val.bin")
        shards.append({"file": "tokens/val.bin", "split": "val", "rows": vrows, "tokens": int(v.size),
                       "max_id": int(v.max())})
    import pandas as pd

    pd.DataFrame(shards, columns=["file", "split", "rows", "tokens", "max_id"]).to_parquet(out / "shards.parquet")
    index = {"dtype": np.dtype(dtype).name, "seq_len": L, "vocab_size": vocab, "eos_id": eos,
             "pad_id": tok.token_to_id(PAD), "shards": shards, "mixture": mixture,
             "rephrasings": len(reph), "rephrase_epochs": cfg.rephrase_epochs}
    (ctx.workdir / "index.json").write_text(json.dumps(index, indent=1))
    written = sum(s["tokens"] for s in shards if s["split"] == "train")
    on_disk = sum((ctx.workdir / s["file"]).stat().st_size // np.dtype(dtype).itemsize
                  for s in shards if s["split"] == "train")
    return {"documents": len(docs), "train_documents": len(train), "val_documents": len(val),
            "rephrasings_used": len(reph),
            "train_document_epochs": train_docs, "vocab_size": vocab, "seq_len": L,
            "stream_tokens": int(len(train_ids)), "train_tokens": written, "train_rows": rows,
            "dropped_tail_tokens": int(len(train_ids) - written), "val_rows": vrows,
            "train_shards": sum(s["split"] == "train" for s in shards),
            "max_id": max((s["max_id"] for s in shards), default=-1),
            "id_headroom": vocab - 1 - max((s["max_id"] for s in shards), default=-1),
            "token_count_error": int(expected - len(train_ids)) + int(on_disk - written),
            "tokens_per_document": round(len(train_ids) / max(train_docs, 1), 1)}


def gate_frame(workdir: Path, columns: list[str]):
    import pandas as pd

    path = workdir / "tokens" / "shards.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame({c: [] for c in columns})
