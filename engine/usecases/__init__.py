"""The use cases behind IndexService: reads, writes, training, merges and sweeps, key rotation
and re-encryption, batch loads, and the metadata field policy."""
