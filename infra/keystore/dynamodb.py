"""DynamoDB key store (deployed). Table keyed by ``key_id`` (string); the client is
injected (moto in tests) or created lazily, honouring ``AWS_ENDPOINT_URL_DYNAMODB``."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .. import aws
from . import KeyRecord


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class DynamoKeyStore:
    def __init__(self, table: str, client: Any = None) -> None:
        self.table_name = table
        self._client = client
        self._table: Any = None
        self._generation = -1  # aws.generation the table was made in

    @property
    def table(self) -> Any:
        if self._client is None:
            if self._table is None or self._generation != aws.generation:  # renewed after a restore
                self._table = aws.resource("dynamodb").Table(self.table_name)
                self._generation = aws.generation
        elif self._table is None:  # injected client (tests): a resource at its endpoint
            import boto3

            self._table = boto3.resource(
                "dynamodb",
                region_name=self._client.meta.region_name,
                endpoint_url=self._client.meta.endpoint_url,
            ).Table(self.table_name)
        return self._table

    def put(self, record: KeyRecord) -> None:
        item = {k: v for k, v in record.to_item().items() if v is not None}
        for k in ("created_at", "revoked_at"):
            if k in item:
                item[k] = Decimal(str(item[k]))
        self.table.put_item(Item=item)

    def get(self, key_id: str) -> KeyRecord | None:
        item = self.table.get_item(Key={"key_id": key_id}, ConsistentRead=True).get("Item")
        return KeyRecord.from_item({k: _plain(v) for k, v in item.items()}) if item else None

    def list(self, tenant: str | None = None) -> list[KeyRecord]:
        out: list[KeyRecord] = []
        kwargs: dict[str, Any] = {}
        while True:
            page = self.table.scan(**kwargs)
            for item in page.get("Items", []):
                rec = KeyRecord.from_item({k: _plain(v) for k, v in item.items()})
                if tenant in (None, rec.tenant):
                    out.append(rec)
            if "LastEvaluatedKey" not in page:
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
