"""The older official SDK (cyborgdb 0.12) as its users call it: an IVFFlat index with a
server-side embedding model, contents without vectors, queries by contents.

Run in its own process with that SDK first on ``sys.path`` (it shares the package name):
``PYTHONPATH=.sdk012 python tests/sdk012_flow.py URL API_KEY`` prints one JSON object.
"""

from __future__ import annotations

import json
import sys

from cyborgdb import Client, IndexIVFFlat
from cyborgdb.openapi_client.models import Contents

DOCS = {
    "fox": "The quick brown fox jumps over the lazy dog.",
    "garden": "She planted tomatoes, basil and peppers in the raised garden bed.",
    "glacier": "Glaciers carve deep valleys as they slowly move downhill.",
    "bank": "The central bank raised interest rates by a quarter of a percentage point.",
}


def main(url: str, api_key: str) -> None:
    import cyborgdb

    client = Client(url, api_key)
    key = client.generate_key()
    index = client.create_index(
        "legacy", key, IndexIVFFlat(dimension=384), embedding_model="all-MiniLM-L6-v2", metric="cosine"
    )
    # 0.12's own request model takes contents as its Contents wrapper (a bare str fails in the SDK)
    items = [{"id": i, "contents": Contents(text), "metadata": {"topic": i}} for i, text in DOCS.items()]
    index.upsert(items)
    hits = index.query(query_contents="vegetables growing in the backyard", top_k=2)
    print(
        json.dumps(
            {
                "sdk": cyborgdb.__file__,
                "index_type": index.index_type,
                "index_config": index.index_config,
                "hits": hits,
                "trained": index.is_trained(),
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
