"""Cutting long documents into chunks for chunk-wise rewriting (K2 §2.2): at paragraph
boundaries, then sentence boundaries, then hard cuts."""
from __future__ import annotations

import re


def split_chunks(text: str, limit: int) -> list[str]:
    """Cut at paragraph boundaries, then sentence boundaries, then hard; each chunk ≤ limit chars."""
    def pieces(block: str, seps: list[str]) -> list[str]:
        if len(block) <= limit:
            return [block]
        if not seps:
            return [block[i:i + limit] for i in range(0, len(block), limit)]
        parts = re.split(seps[0], block)
        out: list[str] = []
        for p in parts:
            out += pieces(p, seps[1:]) if len(p) > limit else [p]
        return out

    units = [u for u in pieces(text.strip(), [r"\n\s*\n", r"(?<=[.!?])\s+"]) if u.strip()]
    chunks, cur = [], ""
    for u in units:
        if cur and len(cur) + 1 + len(u) > limit:
            chunks.append(cur)
            cur = u
        else:
            cur = f"{cur}\n\n{u}" if cur and "\n" in text else (f"{cur} {u}" if cur else u)
    if cur:
        chunks.append(cur)
    return chunks
