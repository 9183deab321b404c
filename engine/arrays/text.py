"""BM25 full-text search over an index's ``full_text`` metadata fields (bm25s, Porter2 stems),
and the weighted reciprocal-rank fusion that makes a query hybrid.

Nothing of it is stored: each snapshot analyses the live rows' fields (already decrypted in
memory) the first time a text query needs them, so terms and statistics exist only as the
sealed rows they come from, and deletes and overwrites change the statistics with the rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidRequest, ValidationFailed
from .filters import lookup

ANALYZER = "en-porter2-stop-v1"  # lowercase, split on non-alphanumerics, English stopwords, Porter2
DEFAULT_K1, DEFAULT_B = 1.2, 0.75
DEFAULT_ALPHA, DEFAULT_RRF_K, DEFAULT_WINDOW = 0.5, 60.0, 3


@functools.cache
def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


def analyze(texts: list[str]) -> list[list[str]]:
    """The terms of each text, as the index and its queries see them."""
    import bm25s

    out = bm25s.tokenize(
        texts, lower=True, stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False
    )
    return [list(t) for t in out]


@dataclass(frozen=True)
class TextConfig:
    """An index's full-text fields and BM25 constants (``None``: no full-text search)."""

    fields: tuple[str, ...]
    k1: float = DEFAULT_K1
    b: float = DEFAULT_B

    @staticmethod
    def of(config: dict[str, Any]) -> TextConfig | None:
        text = config.get("text")
        if not text:
            return None
        return TextConfig(tuple(text["fields"]), float(text["k1"]), float(text["b"]))

    @staticmethod
    def declare(
        text_fields: list[str] | None, schema: dict[str, Any] | None, k1: float | None, b: float | None
    ) -> dict[str, Any] | None:
        """The ``text`` entry of a new index's configuration, from the create request."""
        fields = list(
            dict.fromkeys([*(text_fields or []), *(f for f, p in (schema or {}).items() if _full(p))])
        )
        if not fields:
            if k1 is not None or b is not None:
                raise InvalidRequest("bm25_k1 and bm25_b need at least one full_text field")
            return None
        if any(not isinstance(f, str) or not f for f in fields):
            raise InvalidRequest("full_text fields must be non-empty names")
        k1 = DEFAULT_K1 if k1 is None else float(k1)
        b = DEFAULT_B if b is None else float(b)
        if not 0 <= k1 <= 100 or not 0 <= b <= 1:
            raise InvalidRequest("bm25_k1 must be within 0..100 and bm25_b within 0..1")
        return {"fields": fields, "k1": k1, "b": b}

    def describe(self) -> dict[str, Any]:
        return {"k1": self.k1, "b": self.b, "analyzer_version": ANALYZER, "text_fields": list(self.fields)}


def _full(policy: Any) -> bool:
    return isinstance(policy, dict) and bool(policy.get("full_text"))


@dataclass(frozen=True)
class TextQuery:
    """One text leg: the text, the fields it searches (``None``: all) and their weights."""

    text: str
    fields: list[str] | None = None
    weights: list[float] | None = None
    require_all: bool = False

    def resolve(self, config: TextConfig | None) -> list[tuple[str, float]]:
        """``(field, weight)`` pairs to search; 400/422 for what the index cannot do."""
        if config is None:
            raise InvalidRequest(
                "this index has no full_text fields; create it with text_fields to search text"
            )
        fields = list(config.fields) if self.fields is None else self.fields
        unknown = [f for f in fields if f not in config.fields]
        if unknown or not fields:
            raise InvalidRequest(
                f"text_fields must name full_text fields of this index: {', '.join(config.fields)}"
            )
        weights = [1.0] * len(fields) if self.weights is None else [float(w) for w in self.weights]
        if len(weights) != len(fields) or any(not np.isfinite(w) or w < 0 for w in weights):
            raise ValidationFailed(
                "text_field_weights takes one finite weight >= 0 per searched field",
                ("body", "text_field_weights"),
            )
        return list(zip(fields, weights, strict=True))


class FieldIndex:
    """BM25 over one field of a snapshot's live rows (doc ``i`` is row ``rows[i]``)."""

    def __init__(self, rows: np.ndarray, docs: list[list[str]], k1: float, b: float) -> None:
        import bm25s

        self.rows = rows
        self.bm25 = bm25s.BM25(k1=k1, b=b)
        self.empty = not any(docs)
        if not self.empty:
            self.bm25.index(docs, show_progress=False)

    def scores(self, terms: list[str]) -> np.ndarray:
        if self.empty or not terms:
            return np.zeros(len(self.rows), dtype=np.float32)
        return np.asarray(self.bm25.get_scores(terms), dtype=np.float32)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(v for v in value if isinstance(v, str))
    return ""


def field_index(snap: Any, field: str, config: TextConfig) -> FieldIndex:
    """The BM25 index of ``field`` over the snapshot's live rows, built once per snapshot."""

    def build() -> FieldIndex:
        rows = snap.live_rows()
        path = field.split(".")
        docs = analyze([_text(lookup(snap.metadata[r], path)) for r in rows.tolist()])
        return FieldIndex(rows, docs, config.k1, config.b)

    return snap.cached(("bm25", field, config.k1, config.b), build)


def search(
    snap: Any, config: TextConfig | None, query: TextQuery, mask: np.ndarray | None, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows matching ``query`` (among ``mask``'s), best first, and their BM25 scores."""
    searched = query.resolve(config)
    assert config is not None
    terms = analyze([query.text])[0]
    indexes = [(field_index(snap, f, config), w) for f, w in searched]
    rows = indexes[0][0].rows
    if not terms or not len(rows):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    total = np.zeros(len(rows), dtype=np.float32)
    for index, weight in indexes:
        total += np.float32(weight) * index.scores(terms)
    keep = total > 0
    if query.require_all:
        for term in set(terms):
            keep &= np.logical_or.reduce([index.scores([term]) > 0 for index, _ in indexes])
    if mask is not None:
        keep &= mask[rows]
    hit = np.flatnonzero(keep)
    order = hit[np.lexsort((hit, -total[hit]))][:limit]  # best first; ties by row (stable)
    return rows[order], total[order]


def fuse(
    vector_ids: list[str], text_ids: list[str], alpha: float, rrf_k: float, top_k: int
) -> list[tuple[str, float]]:
    """Weighted reciprocal-rank fusion: ``alpha / (rrf_k + rank)`` from the vector leg plus
    ``(1 - alpha) / (rrf_k + rank)`` from the text leg (ranks from 1), best first. A leg of
    weight 0 adds no rows: ``alpha = 0`` is exactly the BM25 ranking, ``1`` the vector one."""
    score: dict[str, float] = {}
    for weight, ids in ((alpha, vector_ids), (1.0 - alpha, text_ids)):
        if weight == 0:
            continue
        for rank, i in enumerate(ids, 1):
            score[i] = score.get(i, 0.0) + weight / (rrf_k + rank)
    return sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
