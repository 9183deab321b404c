"""Byte formats and crypto: AEAD sealing of named objects, segments, runs (IVF list objects)."""
