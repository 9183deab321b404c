import os

import pytest

from ciphervec.engine.codec import crypto
from ciphervec.engine.errors import CorruptObject, InvalidRequest, WrongKey


def cipher(dek=None, tenant="t", index="i"):
    return crypto.IndexCipher(dek or os.urandom(32), tenant, index)


def test_wrapped_data_key_layout_is_pinned():
    kek, dek = os.urandom(32), os.urandom(32)
    wrapped = crypto.wrap_data_key(kek, dek, "t", "i")
    assert len(wrapped) == 64 == crypto.WRAPPED_DEK_BYTES
    assert wrapped[:4] == b"CVK1"
    assert dek not in wrapped
    assert crypto.unwrap_data_key(kek, wrapped, "t", "i") == dek


def test_wrong_kek_is_wrong_key():
    wrapped = crypto.wrap_data_key(os.urandom(32), os.urandom(32), "t", "i")
    with pytest.raises(WrongKey):
        crypto.unwrap_data_key(os.urandom(32), wrapped, "t", "i")


@pytest.mark.parametrize("tenant,index", [("other", "i"), ("t", "other")])
def test_wrapped_key_is_bound_to_tenant_and_index(tenant, index):
    kek = os.urandom(32)
    wrapped = crypto.wrap_data_key(kek, os.urandom(32), "t", "i")
    with pytest.raises(WrongKey):
        crypto.unwrap_data_key(kek, wrapped, tenant, index)


def test_object_layout_is_pinned_and_nonce_fresh():
    c = cipher()
    a, b = c.encrypt("seg/1", b"hello"), c.encrypt("seg/1", b"hello")
    assert a[:4] == b"CVO1" and len(a) == 4 + 12 + 5 + 16
    assert a[4:16] != b[4:16] and a != b
    assert c.decrypt("seg/1", a) == b"hello"


def test_flipped_bit_is_corrupt():
    c = cipher()
    blob = bytearray(c.encrypt("seg/1", b"payload" * 10))
    blob[30] ^= 1
    with pytest.raises(CorruptObject):
        c.decrypt("seg/1", bytes(blob))


@pytest.mark.parametrize("keep", [5, 27, 40, -1])
def test_truncation_is_corrupt(keep):
    c = cipher()
    blob = c.encrypt("seg/1", b"payload" * 10)
    with pytest.raises(CorruptObject):
        c.decrypt("seg/1", blob[:keep])


def test_swapped_object_name_is_corrupt():
    c = cipher()
    with pytest.raises(CorruptObject):
        c.decrypt("seg/2", c.encrypt("seg/1", b"x"))


def test_object_moved_to_another_index_or_tenant_is_corrupt():
    dek = os.urandom(32)
    blob = cipher(dek).encrypt("seg/1", b"x")
    for other in (cipher(dek, tenant="u"), cipher(dek, index="j")):
        with pytest.raises(CorruptObject):
            other.decrypt("seg/1", blob)


def test_other_data_key_is_corrupt():
    with pytest.raises(CorruptObject):
        cipher().decrypt("seg/1", cipher().encrypt("seg/1", b"x"))


@pytest.mark.parametrize("bad", ["", "00" * 31, "zz" * 32, "00" * 33, 5])
def test_index_key_must_be_32_hex_bytes(bad):
    with pytest.raises(InvalidRequest):
        crypto.parse_index_key(bad)


def test_index_key_accepts_either_case():
    assert crypto.parse_index_key("AB" * 32) == crypto.parse_index_key("ab" * 32) == b"\xab" * 32


def test_keys_must_be_32_bytes_at_construction():
    with pytest.raises(ValueError):
        crypto.IndexCipher(b"short", "t", "i")
