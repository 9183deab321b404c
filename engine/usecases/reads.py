"""Read use cases: count, list ids, get by id, vector query (probing only the lists it needs
on a cold index), text and hybrid search, and metadata query with ordering. Each takes the
head its caller opened, reads one immutable snapshot, and holds no lock."""

from __future__ import annotations

import json
from itertools import islice
from typing import Any

import numpy as np

from ..arrays.backend import Backend
from ..arrays.filters import compile_filter, lookup
from ..arrays.kernels import all_finite
from ..arrays.masks import Column, compile_mask
from ..arrays.text import DEFAULT_ALPHA, DEFAULT_RRF_K, DEFAULT_WINDOW, TextConfig, TextQuery, fuse
from ..errors import InvalidRequest, ValidationFailed
from ..memory.batching import Batcher
from ..memory.cache import StateCache
from ..memory.coldtext import locate, text_view
from ..memory.search import knn, search_space
from ..memory.state import Snapshot
from ..memory.textindex import TextView
from ..memory.textindex import search as text_search
from ..model import MAX_VALUE
from ..store.heads import Head
from ..timing import stage
from . import policy as field_policy

# A filter that leaves at most max(this, 8 x top_k) rows scans every list instead of probing.
SELECTIVE_ROWS = 4096


class Reader:
    """The read use cases of an index whose head the caller opened (its key proved), over
    the cache of decrypted snapshots."""

    def __init__(
        self,
        cache: StateCache,
        backend: Backend,
        batcher: Batcher | None = None,
        max_filter_scan: int | None = None,
    ) -> None:
        self.cache = cache
        self.backend = backend
        self.batcher = batcher or Batcher()
        # row-by-row filter tests ($regex, $contains, lists) one request may run; None: any
        self.max_filter_scan = max_filter_scan

    def num_vectors(self, head: Head) -> int:
        return self.cache.snapshot(head).live

    def list_ids(self, head: Head) -> list[str]:
        snap = self.cache.snapshot(head)
        return [snap.ids[r] for r in snap.live_rows().tolist()]

    def get(self, head: Head, ids: list[str], include: list[str]) -> list[dict[str, Any]]:
        snap = self.cache.snapshot(head)
        found = [(i, row) for i, row in ((i, snap.row_of(i)) for i in ids) if row is not None]
        vectors = snap.rows([r for _, r in found]).tolist() if "vector" in include else []
        out = []
        for n, (i, row) in enumerate(found):
            item: dict[str, Any] = {"id": i}
            if "vector" in include:
                item["vector"] = vectors[n]
            if "contents" in include:
                item["contents"] = snap.contents[row] or ""
            if "metadata" in include:
                item["metadata"] = snap.metadata[row] or {}
            out.append(item)
        return out

    def _filter_mask(self, snap: Snapshot, filters: Any) -> np.ndarray | None:
        """The rows ``filters`` keep, as a host mask cached with the snapshot; the masks
        themselves are computed in the backend's namespace."""
        if not filters:
            return None
        key = ("filter", json.dumps(filters, sort_keys=True, default=str))
        xp = self.backend.xp

        def column(path: tuple[str, ...]) -> Column:
            values = (lookup(m, list(path)) for m in islice(snap.metadata, snap.n_rows))
            return snap.cached(("column", path), lambda: Column(list(values), xp))

        mask = compile_mask(filters, self.max_filter_scan)
        return snap.cached(key, lambda: self.backend.to_host(mask(column, snap.n_rows, xp)))

    def query(
        self,
        head: Head,
        queries: np.ndarray,
        *,
        top_k: int = 100,
        n_probes: int | None = None,
        filters: Any = None,
        include: list[str] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Nearest neighbours for each row of ``queries`` (float32 ``(m, d)``)."""
        if filters:
            compile_filter(filters)  # 400 on a bad filter before touching the index
        q = self.backend.asarray(queries)
        if not all_finite(q, MAX_VALUE):
            raise ValidationFailed(
                f"query vector values must be finite and within ±{MAX_VALUE:g} (so distances stay finite)",
                ("body", "query_vectors"),
            )
        include = include or []
        # Without filters a query needs only the lists it probes: a cold state stays partial.
        snap = self.cache.snapshot(head, full=bool(filters))
        dim = int(head.body.config["dimension"])
        if dim and queries.shape[1] != dim:
            raise ValidationFailed(
                f"query dimension {queries.shape[1]} does not match the index dimension {dim}",
                ("body", "query_vectors"),
            )
        if (snap.live == 0 and snap.partial is None) or not dim:
            return [[] for _ in range(len(queries))]
        mask = self._filter_mask(snap, filters)
        cent = head.body.centroids
        probes = n_probes or (cent.probes_for(top_k) if cent else 1)
        if cent is not None:
            probes = max(1, min(probes, cent.n_lists))
            # A selective filter leaves few rows: visit every list, i.e. scan them all.
            if mask is not None and int(mask.sum()) <= max(SELECTIVE_ROWS, 8 * top_k):
                probes = cent.n_lists
        if snap.partial is not None:
            space = np.ascontiguousarray(self.backend.to_host(search_space(head.metric, q)), dtype=np.float32)
            probed = snap.quantizer.search(space, probes)[1]
            snap = self.cache.load_lists(head, snap, snap.partial.missing(probed[probed >= 0].ravel()))
            if snap.partial is not None:
                self.cache.fill_later(head)
        with stage("search"):
            if len(queries) == 1 and snap.partial is None:  # concurrent single queries: one batch
                # A mask is a snapshot's own (it caches one per filter): filtered queries
                # share a batch within a snapshot, unfiltered ones across snapshots (a batch
                # runs on the newest one it was given).
                key = (head.key, snap.uid, top_k, probes, None if mask is None else (snap.version, id(mask)))

                def search(vs: list[Any], snap: Snapshot = snap) -> list[Any]:
                    return [(snap, *hit) for hit in self._knn(snap, vs, top_k, probes, mask)]

                newest = (snap.applied_seq, snap.version)  # content first (see batching.py)
                hits = [self.batcher.search(key, q, search, newest, scan=cent is None)]
            else:
                hits = [(snap, *hit) for hit in knn(snap, q, top_k, probes, mask, self.backend)]
        # row numbers are those of the snapshot the search ran on
        return [_shape(ran, rows, dist, include) for ran, rows, dist in hits]

    def _knn(self, snap: Snapshot, vectors: list[Any], top_k: int, probes: int, mask: Any) -> list[Any]:
        """One search for queries of shape (1, d) each (assembled into one batch)."""
        batch = vectors[0] if len(vectors) == 1 else self.backend.xp.concat(vectors, axis=0)
        # The other cores serve other requests (one search slot each): no OpenMP team here.
        with self.backend.threads(1):
            return knn(snap, batch, top_k, probes, mask, self.backend)

    def search(
        self,
        head: Head,
        queries: np.ndarray | None,
        text: TextQuery | None,
        *,
        top_k: int = 100,
        n_probes: int | None = None,
        filters: Any = None,
        include: list[str] | None = None,
        alpha: float | None = None,
        rrf_k: float | None = None,
        window: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """One search, whatever it is given: vectors alone (nearest neighbours), a text alone
        (BM25), or both (hybrid, fused with ``alpha``, ``rrf_k`` and ``window`` or their
        defaults). One list of hits per query vector; a text alone is one query."""
        if queries is None:
            if text is None:
                raise InvalidRequest("give query vectors, a text, or both")
            return [self.text_query(head, text, top_k=top_k, filters=filters, include=include)]
        if text is None:
            return self.query(head, queries, top_k=top_k, n_probes=n_probes, filters=filters, include=include)
        if window is not None and window < 1:
            raise InvalidRequest("window_mult must be at least 1")
        if rrf_k is not None and rrf_k <= 0:
            raise InvalidRequest("rrf_k must be greater than 0")
        return self.hybrid_query(
            head,
            queries,
            text,
            top_k=top_k,
            n_probes=n_probes,
            filters=filters,
            include=include,
            alpha=DEFAULT_ALPHA if alpha is None else alpha,
            rrf_k=DEFAULT_RRF_K if rrf_k is None else rrf_k,
            window=window or DEFAULT_WINDOW,
        )

    def text_query(
        self,
        head: Head,
        text: TextQuery,
        *,
        top_k: int = 100,
        filters: Any = None,
        include: list[str] | None = None,
        policy: bool = False,
    ) -> list[dict[str, Any]]:
        """Rows ranked by BM25 over the index's full_text fields, with ``score``; ``policy``:
        the filters obey the index's field policy (``query_metadata``)."""
        if filters:
            compile_filter(filters)
        if policy and filters:
            field_policy.check(head.body.config, filters)
        config = TextConfig.of(head.body.config)
        text.resolve(config)  # 400 before any work
        snap, found = self._text_hits(head, config, text, filters, top_k)
        return _scored(snap, found, include or [])

    def _text_hits(
        self, head: Head, config: TextConfig | None, text: TextQuery, filters: Any, limit: int
    ) -> tuple[Snapshot, list[tuple[int, float]]]:
        """The best ``limit`` rows for ``text`` and their scores, as rows of the snapshot
        returned. Without filters, a cold index's runs answer from their text objects
        (``coldtext.py``) and only the lists holding the hits are read; a filter needs every
        row's metadata."""
        snap = self.cache.snapshot(head, full=bool(filters))
        missing = snap.partial is not None and snap.partial.missing()
        cold = text_view(self.cache, head, snap) if missing else None
        if cold is None:
            snap = self.cache.snapshot(head)
            view = snap.cached("text-view", lambda: TextView.of(snap))
        else:
            snap, view, runs = cold
            self.cache.fill_later(head)
        with stage("search"):
            rows, scores = text_search(view, config, text, self._filter_mask(snap, filters), limit)
        if cold is None:
            return snap, list(zip(rows.tolist(), scores.tolist(), strict=True))
        ids, lists = locate(snap, runs, rows)
        snap = self.cache.load_lists(head, snap, lists)  # those holding the hits, for their fields
        found = [(snap.row_of(i), s) for i, s in zip(ids, scores.tolist(), strict=True)]
        return snap, [(r, s) for r, s in found if r is not None]

    def hybrid_query(
        self,
        head: Head,
        queries: np.ndarray,
        text: TextQuery,
        *,
        top_k: int = 100,
        n_probes: int | None = None,
        filters: Any = None,
        include: list[str] | None = None,
        alpha: float = 0.5,
        rrf_k: float = 60.0,
        window: int = 3,
    ) -> list[list[dict[str, Any]]]:
        """Each query vector's neighbours and the text's BM25 matches — each leg ``window x
        top_k`` deep, filters applied to both — fused by weighted reciprocal rank."""
        config = TextConfig.of(head.body.config)
        text.resolve(config)
        depth = top_k * max(1, window)
        vector = self.query(head, queries, top_k=depth, n_probes=n_probes, filters=filters)
        snap, found_text = self._text_hits(head, config, text, filters, depth)  # the same head
        text_ids = [snap.ids[r] for r, _ in found_text]
        out = []
        for hits in vector:
            fused = fuse([h["id"] for h in hits], text_ids, alpha, rrf_k, top_k)
            found = [(row, s) for row, s in ((snap.row_of(i), s) for i, s in fused) if row is not None]
            out.append(_scored(snap, found, include or []))
        return out

    def query_metadata(
        self,
        head: Head,
        filters: Any,
        *,
        top_k: int | None = None,
        order_by: str | None = None,
        ascending: bool = True,
    ) -> list[str]:
        """Ids of the live rows matching ``filters``, which obey the index's field policy."""
        compile_filter(filters)
        field_policy.check(head.body.config, filters)
        snap = self.cache.snapshot(head)
        rows = snap.live_rows()
        mask = self._filter_mask(snap, filters)
        if mask is not None:
            rows = rows[mask[rows]]
        ids = [snap.ids[r] for r in rows.tolist()]
        if order_by:
            path = order_by.split(".")
            keyed = [(_sort_key(snap.metadata[r], path), i) for r, i in zip(rows.tolist(), ids, strict=True)]
            present = sorted(
                (k for k in keyed if k[0] is not None), key=lambda k: k[0], reverse=not ascending
            )
            ids = [i for _, i in present] + [i for k, i in keyed if k is None]
        return ids if top_k is None else ids[:top_k]


def _shape(snap: Snapshot, rows: np.ndarray, dist: np.ndarray, include: list[str]) -> list[dict[str, Any]]:
    """One query's result items with the ``include`` fields."""
    return _items(snap, rows.tolist(), dist.tolist(), "distance" if "distance" in include else None, include)


def _scored(snap: Snapshot, found: list[tuple[int, float]], include: list[str]) -> list[dict[str, Any]]:
    """Text and hybrid result items: ``score`` (higher is better) instead of ``distance``."""
    return _items(snap, [r for r, _ in found], [s for _, s in found], "score", include)


def _items(
    snap: Snapshot, rows: list[int], values: list[float], name: str | None, include: list[str]
) -> list[dict[str, Any]]:
    """Result items of ``rows``: the id, ``values`` under ``name`` (when given), and the
    ``include`` fields."""
    vectors = snap.rows(rows).tolist() if "vector" in include and rows else []
    out = []
    for n, row in enumerate(rows):
        item: dict[str, Any] = {"id": snap.ids[row]}
        if name is not None:
            item[name] = float(values[n])
        if "metadata" in include:
            item["metadata"] = snap.metadata[row] or {}
        if "vector" in include:
            item["vector"] = vectors[n]
        if "contents" in include:
            item["contents"] = snap.contents[row] or ""
        out.append(item)
    return out


def _sort_key(item: dict[str, Any] | None, path: list[str]) -> Any:
    value = lookup(item, path)
    if isinstance(value, bool | int | float):
        return (0, float(value), "")
    if isinstance(value, str):
        return (1, 0.0, value)
    return None
