"""The signature fields' fast reading (the canonical forms stock signers send) gives exactly
what the general structured-field parser gives, and leaves every other form to it."""

from __future__ import annotations

import base64
from typing import Any

import http_sf
from hypothesis import given
from hypothesis import strategies as st

from partners.signatures import parse_signed
from partners.signatures.fields import canonical_bytes, canonical_inputs

_KEYS = st.from_regex(r"[a-z*][a-z0-9_\-.*]{0,6}", fullmatch=True)
_STRINGS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
_INTEGERS = st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1)
_PARAMS = st.dictionaries(_KEYS, st.one_of(_STRINGS, _INTEGERS), max_size=5)
_ITEMS: st.SearchStrategy[list[tuple[str, dict[str, Any]]]] = st.lists(
    st.tuples(_STRINGS, st.just({})), max_size=5
)
_INNER_LISTS = st.tuples(_ITEMS, _PARAMS)


def _parsed(text: str) -> Any:
    return http_sf.parse(text.encode("ascii"), tltype="dictionary")


@given(st.dictionaries(_KEYS, _INNER_LISTS, min_size=1, max_size=4))
def test_canonical_signature_input_reads_as_the_general_parser_reads_it(
    members: dict[str, Any],
) -> None:
    text = http_sf.ser(members)
    fast = canonical_inputs(text)
    assert fast is not None
    assert {label: member for label, (member, _) in fast.items()} == _parsed(text)
    for label, (member, member_text) in fast.items():
        assert f"{label}={member_text}" == http_sf.ser({label: member})


@given(st.dictionaries(_KEYS, st.binary(max_size=70), min_size=1, max_size=4))
def test_canonical_byte_sequences_read_as_the_general_parser_reads_them(
    members: dict[str, bytes],
) -> None:
    text = http_sf.ser({label: (value, {}) for label, value in members.items()})
    assert canonical_bytes(text) == _parsed(text)


def test_other_forms_are_left_to_the_general_parser() -> None:
    for text in (
        'sig1=( "@method" );created=1',  # spaces inside the list
        'sig1=("@method");created=01',  # a leading zero
        'sig1=("@method");created=-0',
        'sig1=("@method");created=1,sig2=("@path");created=2',  # no space after the comma
        'sig1=("@method");created=1;created=2',  # a parameter twice
        'sig1=("@method");created=1, sig1=("@path");created=2',  # a label twice
        'sig1=("content-digest";sf);created=1',  # a component parameter
        "sig1=(method);created=1",  # a token
        'sig1=("@method");alg=hmac-sha256',  # a token parameter
        'sig1=("@method");created=1.5',  # a decimal
        'sig1=("@method");created',  # a boolean
    ):
        assert canonical_inputs(text) is None, text
    for text in ("sig1=:AAA:", "sig1=:AAB=:", "sig1=:AAAA:;p=1", "sig1=:AAAA:,sig2=:AAAA:"):
        assert canonical_bytes(text) is None, text


def test_a_signature_sent_in_another_form_is_read_the_same() -> None:
    canonical = {
        "signature-input": 'sig1=("@method" "@path");created=1700000000;keyid="key_1"',
        "signature": "sig1=:" + base64.b64encode(b"x" * 32).decode() + ":",
    }
    spaced = {
        "signature-input": 'sig1=( "@method"  "@path" ); created=1700000000;keyid="key_1"',
        "signature": "sig1=:" + base64.b64encode(b"x" * 32).decode() + ":  ",
    }
    fast, general = parse_signed(canonical), parse_signed(spaced)
    assert fast.inputs == general.inputs and fast.values == general.values
    assert fast.signatures[0].serialized == canonical["signature-input"].removeprefix("sig1=")
    assert general.signatures[0].serialized is None
