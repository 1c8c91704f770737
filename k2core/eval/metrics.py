"""Estimators the suites share: unbiased pass@k (HumanEval), pass^k (τ²-bench), a Wilson interval."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k samples drawn from n (c correct) is correct:
    1 - C(n-c, k) / C(n, k), computed as HumanEval does (1 - prod(1 - k / i), i = n-c+1..n)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_hat_k(n: int, c: int, k: int) -> float:
    """Chance that k samples drawn from n (c correct) are all correct: C(c, k) / C(n, k) (τ²-bench)."""
    if k > n:
        raise ValueError(f"pass^{k} needs at least {k} trials per task, got {n}")
    return math.comb(c, k) / math.comb(n, k)


def mean(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion (None when n = 0)."""
    if n <= 0:
        return None
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def pass_at_k_score(suite: str, results: list[dict[str, Any]], id_key: str, ks: tuple[int, ...],
                    failure: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """Unbiased pass@k over problems (each result ``{id_key, passed, …}``), for each k no larger
    than the fewest samples of a problem; failures counted by ``failure(result)``."""
    per: dict[str, list[bool]] = {}
    for r in results:
        per.setdefault(r[id_key], []).append(bool(r["passed"]))
    fewest = min((len(v) for v in per.values()), default=0)
    out: dict[str, Any] = {"suite": suite, "problems": len(per), "samples": len(results),
                           "passed": sum(bool(r["passed"]) for r in results)}
    for k in ks:
        if k <= fewest:
            out[f"pass@{k}"] = round(sum(pass_at_k(len(v), sum(v), k) for v in per.values()) / len(per), 4)
    reasons: dict[str, int] = {}
    for r in results:
        if not r["passed"]:
            key = failure(r)
            reasons[key] = reasons.get(key, 0) + 1
    out["failures"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
    return out
