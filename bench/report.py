"""The target table of `make bench` (bench/run.py): ratios of the systems measured side by
side, each against its goal, and the per-dataset table of medians."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b  # type: ignore[operator]


def targets(
    cv: dict[str, Any], ref: dict[str, Any] | None, fs: dict[str, Any], ip: dict[str, Any], raw_mb: float
) -> list[tuple[str, str, str, bool | None]]:
    rows: list[tuple[str, str, str, bool | None]] = []

    def add(name: str, value: float | None, goal: str, ok: Callable[[float], bool]) -> None:
        rows.append(
            (name, "n/a" if value is None else f"{value:.3f}", goal, None if value is None else ok(value))
        )

    r = ref or {}
    add("recall@10 after training, default n_probes", cv["recall"], ">= 0.95", lambda v: v >= 0.95)
    add("ingest vs reference", ratio(cv["ingest_vps"], r.get("ingest_vps")), ">= 2.5x", lambda v: v >= 2.5)
    add(
        "single-query p50 vs reference",
        ratio(cv["query_p50_ms"], r.get("query_p50_ms")),
        "<= 1.0x",
        lambda v: v <= 1.0,
    )
    add(
        "batch-query QPS vs reference",
        ratio(cv["batch_qps"], r.get("batch_qps")),
        ">= 1.5x",
        lambda v: v >= 1.5,
    )
    add("train time vs reference", ratio(cv["train_s"], r.get("train_s")), "<= 0.5x", lambda v: v <= 0.5)
    add(
        "get 100 p50 vs reference",
        ratio(cv["get100_p50_ms"], r.get("get100_p50_ms")),
        "<= 0.5x",
        lambda v: v <= 0.5,
    )
    add(
        "in-process query QPS vs faiss IVFFlat",
        ratio(ip["query_qps"], fs["query_qps"]),
        ">= 0.8x",
        lambda v: v >= 0.8,
    )
    add(
        "in-process ingest vs decode+faiss add",
        ratio(ip["ingest_vps"], fs["decode_add_vps"]),
        ">= 0.5x",
        lambda v: v >= 0.5,
    )
    add(
        "server RSS MB vs 1.5 x raw + 150",
        ratio(cv["rss_mb"], 1.5 * raw_mb + 150),
        "<= 1.0x",
        lambda v: v <= 1.0,
    )
    return rows


def print_table(title: str, systems: dict[str, dict[str, Any] | None]) -> None:
    keys: list[str] = []
    for res in systems.values():
        for k in res or {}:
            if k not in keys:
                keys.append(k)
    names = list(systems)
    print(f"\n{title}")
    print(f"  {'figure':<26}" + "".join(f"{n:>14}" for n in names))
    for k in keys:
        cells = []
        for n in names:
            v = (systems[n] or {}).get(k)
            cells.append(
                f"{v:>14.3f}" if isinstance(v, float) else f"{v!s:>14}" if v is not None else f"{'-':>14}"
            )
        print(f"  {k:<26}" + "".join(cells))
