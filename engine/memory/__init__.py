"""In-memory state: immutable snapshots of an index's rows, their faiss parts, the cache that
keeps them in step with heads, lazily read IVF lists, and search over a snapshot."""
