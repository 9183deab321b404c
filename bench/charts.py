"""The benchmark charts of the docs, from the newest results `make bench` wrote (bench/results):

    .venv/bin/python bench/charts.py [--out docs/assets/charts]

* size.png — recall@10 and @100 at the defaults against index size (bench/recall.py), and the
  single-query p50 over HTTP against size where a scale run exists (bench/scale.py);
* nprobes.png — recall@10 and the time per query against n_probes, one line per size
  (bench/recall.py's sweep);
* tiers.png — bytes per vector (stored, and in memory) against recall@10 for each storage tier
  (bench/turboquant.py);
* clients.png — queries per second against concurrent SDK clients, k = 10 and 100, beside
  embedded LanceDB where it ran (bench/concurrency.py).

A chart whose results are missing is skipped with a line saying so. `make bench` runs this
at its end; commit the PNGs with the figures they show (docs/figures.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE.parent / "docs" / "assets" / "charts"


def newest(name: str) -> Any:
    """The newest results of ``name``: its own run (``<name>-*.json``) or a `make bench` run
    (``bench-*.json``) that has that section, whichever was written last."""
    found: list[tuple[str, Any]] = []
    for path in RESULTS.glob(f"{name}-*.json"):
        found.append((path.stem[len(name) + 1 :], json.loads(path.read_text())))
    for path in RESULTS.glob("bench-*.json"):
        section = json.loads(path.read_text()).get(name)
        if section:
            found.append((path.stem[len("bench-") :], section))
    return max(found, key=lambda f: f[0])[1] if found else None


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def size_chart(out: Path) -> bool:
    recall = newest("recall")
    if not recall:
        return False
    rows = recall["sizes"] if isinstance(recall, dict) else recall
    scale = newest("scale")
    scale_rows = scale["scale"] if isinstance(scale, dict) and "scale" in scale else scale or []
    plt = _plt()
    fig, axes = plt.subplots(
        1, 2 if scale_rows else 1, figsize=(10 if scale_rows else 5.5, 3.6), squeeze=False
    )
    ax = axes[0][0]
    n = [r["n"] for r in rows]
    ax.plot(n, [r["recall10"] for r in rows], "o-", label="recall@10")
    ax.plot(n, [r["recall100"] for r in rows], "s-", label="recall@100")
    ax.axhline(0.95, color="grey", linestyle=":", label="promise (0.95)")
    ax.set(xscale="log", xlabel="rows in the index", ylabel="recall (held-out queries)", ylim=(0.9, 1.0))
    ax.set_title("Recall at the defaults (auto n_probes)")
    ax.legend(loc="lower left")
    if scale_rows:
        ax = axes[0][1]
        sn = [r.get("n") or r.get("rows") for r in scale_rows]
        ax.plot(sn, [r["query_p50_ms"] for r in scale_rows], "o-", label="p50")
        ax.plot(sn, [r["query_p99_ms"] for r in scale_rows], "s--", label="p99")
        ax.set(xscale="log", xlabel="rows in the index", ylabel="ms per query (SDK over HTTP, k=10)")
        ax.set_title("Single-query latency")
        ax.legend()
    _save(plt, fig, out / "size.png")
    return True


def nprobes_chart(out: Path) -> bool:
    recall = newest("recall")
    rows = (recall["sizes"] if isinstance(recall, dict) else recall) if recall else []
    rows = [r for r in rows if r.get("sweep")]
    if not rows:
        return False
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in rows:
        probes = [s["n_probes"] for s in r["sweep"]]
        line = left.plot(probes, [s["recall10"] for s in r["sweep"]], "o-", label=f"{r['n']:,} rows")[0]
        right.plot(probes, [s["ms_per_query"] for s in r["sweep"]], "o-", color=line.get_color())
        left.axvline(r["auto_n_probes"], color=line.get_color(), linestyle=":", alpha=0.6)
    left.set(xscale="log", xlabel="n_probes (dotted: the auto choice)", ylabel="recall@10", ylim=(0, 1.0))
    left.set_title("Recall against n_probes")
    left.legend(loc="lower right")
    right.set(xscale="log", yscale="log", xlabel="n_probes", ylabel="ms per query (in process, batched)")
    right.set_title("Time per query against n_probes")
    _save(plt, fig, out / "nprobes.png")
    return True


def tiers_chart(out: Path) -> bool:
    tq = newest("turboquant")
    if not tq:
        return False
    plt = _plt()
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for row in tq["tiers"]:
        for key, marker in (("store_bytes_per_vector", "o"), ("memory_bytes_per_vector", "x")):
            ax.scatter(row[key], row["recall_at_10"], marker=marker, color="C0" if marker == "o" else "C1")
        ax.annotate(
            row["tier"],
            (row["store_bytes_per_vector"], row["recall_at_10"]),
            textcoords="offset points",
            xytext=(4, -12),
        )
    ax.scatter([], [], marker="o", color="C0", label="stored (S3 / disk)")
    ax.scatter([], [], marker="x", color="C1", label="in memory")
    ax.set(xscale="log", xlabel="bytes per vector (log)", ylabel="recall@10 (default n_probes)")
    ax.xaxis.set_major_locator(FixedLocator([100, 200, 400, 800, 1600]))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(y=0.12)
    ax.legend(loc="lower right")
    ax.set_title(f"Storage tiers, {tq['n']:,} MiniLM-384 rows")
    _save(plt, fig, out / "tiers.png")
    return True


def clients_chart(out: Path) -> bool:
    conc = newest("concurrency")
    if not conc or not conc.get("http"):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for k in sorted({r["k"] for r in conc["http"]}):
        rows = sorted((r for r in conc["http"] if r["k"] == k), key=lambda r: r["clients"])
        ax.plot([r["clients"] for r in rows], [r["qps"] for r in rows], "o-", label=f"ciphervec, k={k}")
        lance = sorted((r for r in conc.get("lancedb") or [] if r["k"] == k), key=lambda r: r["clients"])
        if lance:
            ax.plot([r["clients"] for r in lance], [r["qps"] for r in lance], "s--", label=f"LanceDB, k={k}")
    ax.set(xlabel="concurrent SDK clients", ylabel="queries per second", ylim=(0, None))
    ax.set_title(f"Throughput against clients ({conc.get('n', 0):,} rows, one server process)")
    ax.legend()
    _save(plt, fig, out / "clients.png")
    return True


CHARTS = {
    "size.png": size_chart,
    "nprobes.png": nprobes_chart,
    "tiers.png": tiers_chart,
    "clients.png": clients_chart,
}


def make(out: Path = OUT) -> list[str]:
    """Draw every chart whose results exist; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for name, draw in CHARTS.items():
        if draw(out):
            made.append(name)
            print(f"  chart: {out / name}")
        else:
            print(f"  [skip] {name}: no results for it in {RESULTS}")
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    make(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
