"""BM25 over an index's ``full_text`` metadata fields: the analyzer (bm25s's tokenizer with
English stopwords and Porter2 stems), the per-term score exactly as bm25s's Lucene variant
computes it, an index's text configuration and a query's, and the weighted reciprocal-rank
fusion that makes a query hybrid.

Writes analyse their own rows once and store the terms sealed beside them
(``codec/terms.py``); a snapshot keeps them as postings (``memory/textindex.py``) and
combines them at query time into statistics over exactly its live rows.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidRequest, ValidationFailed

ANALYZER = "en-porter2-stop-v1"  # lowercase, split on non-alphanumerics, English stopwords, Porter2
DEFAULT_K1, DEFAULT_B = 1.2, 0.75
DEFAULT_ALPHA, DEFAULT_RRF_K, DEFAULT_WINDOW = 0.5, 60.0, 3


_local = threading.local()


def _stemmer() -> Any:
    """This thread's Snowball English stemmer (a PyStemmer instance is not thread-safe, and
    writes analyse their rows in request threads and in a run's parallel list writers)."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        import Stemmer

        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer


def analyze(texts: list[str]) -> list[list[str]]:
    """The terms of each text, as the index and its queries see them."""
    import bm25s

    out = bm25s.tokenize(
        texts, lower=True, stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False
    )
    return [list(t) for t in out]


def analyze_ids(texts: list[str]) -> tuple[list[list[int]], list[str]]:
    """The terms of each text as ids, and the terms those ids stand for (``analyze``'s
    terms, numbered)."""
    import bm25s

    out = bm25s.tokenize(
        texts, lower=True, stopwords="en", stemmer=_stemmer(), return_ids=True, show_progress=False
    )
    vocab = [""] * len(out.vocab)
    for term, i in out.vocab.items():
        vocab[i] = term
    return out.ids, vocab


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
    def fields_of(config: dict[str, Any]) -> tuple[str, ...]:
        """The full-text fields of an index's configuration (none: ``()``)."""
        text = TextConfig.of(config)
        return text.fields if text is not None else ()

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


def term_scores(
    tf: np.ndarray, lengths: np.ndarray, df: int, n_docs: int, avg_len: float, k1: float, b: float
) -> np.ndarray:
    """One term's BM25 score in each document holding it (``tf`` times, ``lengths`` long), of
    ``n_docs`` documents averaging ``avg_len``, ``df`` of which hold it: bm25s's Lucene
    variant, operation for operation (float32 idf, float64 term part, float32 result), so
    the sums a query makes are bit-identical to bm25s's."""
    idf = np.float32(math.log(1 + (n_docs - df + 0.5) / (df + 0.5)))
    tfc = tf / (k1 * ((1 - b) + b * lengths / np.float64(avg_len)) + tf.astype(np.float64))
    return (idf * tfc).astype(np.float32)


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
