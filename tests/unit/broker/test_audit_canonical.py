"""RFC 8785 canonical JSON, the keys' ids and the field redactor, on their own."""

from __future__ import annotations

import json
import math
import stat
import struct
from pathlib import Path

import pytest

from broker.audit.canonical import CanonicalJSONError, canonical, canonical_text
from broker.audit.redaction import FieldRedactor, SealError
from broker.audit.signing import (
    AuditKeyError,
    AuditSigner,
    PublicKeys,
    key_id_of,
    load_or_create_signer,
    public_keys_from_pem,
)
from broker.settings import SettingsError


def _double(bits: str) -> float:
    value: float = struct.unpack(">d", bytes.fromhex(bits))[0]
    return value


# RFC 8785 Appendix B: IEEE 754 doubles and their ECMAScript form.
RFC_8785_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), RFC_8785_NUMBERS)
def test_numbers_are_written_as_ecmascript_writes_them(bits: str, expected: str) -> None:
    assert canonical_text(_double(bits)) == expected


def test_the_rfc_example_object_is_canonicalized_byte_for_byte() -> None:
    """RFC 8785 §3.2.3's sorting example and §3.2.4's output, through a JSON round trip."""
    source = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical(json.loads(source)) == expected.encode("utf-8")


def test_members_sort_by_utf16_code_units_not_code_points() -> None:
    # U+1F600 is D83D DE00 in UTF-16: before U+FB33 there, after it by code point.
    members = {"\U0001f600": 1, "\ufb33": 2, "a": 3, "\u00e9": 4}
    assert canonical_text(members) == '{"a":3,"é":4,"😀":1,"דּ":2}'


@pytest.mark.parametrize("bad", [math.nan, math.inf, {1: "x"}, object(), "\ud800"])
def test_values_without_a_canonical_form_are_refused(bad: object) -> None:
    with pytest.raises(CanonicalJSONError):
        canonical(bad)


def test_the_key_id_is_the_public_keys_digest_and_signatures_verify_only_under_it() -> None:
    signer, other = AuditSigner.generate(), AuditSigner.generate()
    assert signer.key_id == key_id_of(signer.public_key) != other.key_id
    digest = bytes(range(32))
    signature = bytes.fromhex(signer.sign(digest))
    keys = PublicKeys([signer.public_key])
    assert keys.verifies(signer.key_id, digest, signature)
    assert not keys.verifies(signer.key_id, bytes(32), signature)
    assert not keys.verifies(other.key_id, digest, signature)
    both = public_keys_from_pem(signer.public_pem + other.public_pem)
    assert {key_id_of(k) for k in both} == {signer.key_id, other.key_id}
    assert "PRIVATE" not in repr(signer) and signer.private_pem() not in repr(signer)


def test_a_signing_key_file_is_made_private_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit.pem"
    first = load_or_create_signer(None, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_signer(None, path).key_id == first.key_id
    configured = AuditSigner.generate()
    assert load_or_create_signer(configured.private_pem(), path).key_id == configured.key_id
    path.chmod(0o644)
    with pytest.raises(SettingsError, match="readable by other users"):
        load_or_create_signer(None, path)


def test_a_key_that_is_not_ed25519_is_refused_without_showing_it() -> None:
    with pytest.raises(SettingsError) as caught:
        load_or_create_signer("not a key at all", Path("/nonexistent"))
    assert "not a key at all" not in str(caught.value)
    with pytest.raises(AuditKeyError):
        public_keys_from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_redacted_fields_become_matching_keyed_hashes_at_any_depth() -> None:
    redactor = FieldRedactor("r" * 40)
    arguments = {"card_number": "4111111111111111", "order": {"card_number": "4111111111111111"}}
    redacted = redactor.redact(arguments, {"card_number"})
    text = json.dumps(redacted)
    assert "4111111111111111" not in text
    assert redacted["card_number"] == redacted["order"]["card_number"]
    assert redacted["card_number"]["redacted"] == redactor.keyed_hash("4111111111111111")
    # Another key, another hash: nobody without the key can test guesses.
    assert FieldRedactor("s" * 40).keyed_hash("4111111111111111") != redactor.keyed_hash(
        "4111111111111111"
    )
    # Text that is not JSON cannot be searched: it is replaced whole.
    assert "4111" not in redactor.redact_json_text('{"card_number": "4111', {"card_number"})
    assert redactor.redact_json_text('{"a": 1}', set()) == '{"a": 1}'


def test_sealed_arguments_open_only_with_the_same_key_and_context() -> None:
    redactor = FieldRedactor("r" * 40)
    sealed = redactor.seal('{"card_number": "4111111111111111"}', "sess_1:call_1")
    assert "4111" not in sealed
    assert redactor.unseal(sealed, "sess_1:call_1") == '{"card_number": "4111111111111111"}'
    with pytest.raises(SealError):
        redactor.unseal(sealed, "sess_1:call_2")
    with pytest.raises(SealError):
        FieldRedactor("s" * 40).unseal(sealed, "sess_1:call_1")
    with pytest.raises(SealError):
        redactor.unseal(sealed[:-4] + "AAAA", "sess_1:call_1")
    assert "r" * 40 not in repr(redactor)
