"""The signature fields of a request, read as RFC 8941/9651 structured fields.

``Signature-Input``, ``Signature`` and ``Content-Digest`` are dictionaries. The parser is the
``http-sf`` library's (``http_sf.parse`` and ``http_sf.ser``), the reference for every form a
client may send. In front of it sits one measured shortcut: a field in the exact canonical
serialisation stock signers send (RFC 8941 section 4.1: a dictionary of inner lists of bare
strings with string or integer parameters, or of padded base64 byte sequences) is read by
strict regular expressions into the very values ``http_sf`` gives, and its text is then its
own re-serialisation (which the signature base needs). Any other form (other spacing, tokens,
component parameters, a repeated key...) goes to ``http_sf``. The shortcut costs a third of
``http_sf``'s CPU and spares serialising ``@signature-params`` back (docs/signing.md has the
figures); tests/partners/test_signature_fields.py checks both readings agree.

:func:`parse_signed` is the entry point: the fields parsed once per request, for the key
cache (the key ids), the policy (the parameters) and the replay guard (the members).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import http_sf

from partners.signatures.refusals import fail

#: Signatures one request may carry (each may cost a verification per candidate URL).
MAX_SIGNATURES = 8
#: The longest key id looked up (the api_keys id column).
MAX_KEY_ID_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Component:
    """A covered component: its name and its parameters (``sf``, ``key``...)."""

    name: str
    params: tuple[tuple[str, Any], ...]

    @property
    def bare(self) -> bool:
        return not self.params


@dataclass(slots=True)
class Signature:
    """One labelled signature as parsed from ``Signature-Input`` and ``Signature``."""

    label: str
    components: list[Component]
    params: dict[str, Any]
    input_member: Any
    value_member: Any = field(default=None)
    #: The member's canonical serialisation (without ``label=``) when it arrived in that form.
    serialized: str | None = field(default=None)

    def params_text(self) -> str:
        """The value of ``@signature-params``: the member re-serialised (canonical), as the
        library builds it, which is the text as sent when it arrived canonical."""
        if self.serialized is not None:
            return self.serialized
        return http_sf.ser({self.label: self.input_member}).removeprefix(self.label + "=")

    def alone(self) -> tuple[str, str]:
        """``Signature-Input`` and ``Signature`` holding this label's members only."""
        return (
            http_sf.ser({self.label: self.input_member}),
            http_sf.ser({self.label: self.value_member}),
        )


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request's signature fields, parsed once: what the key cache must know (the key ids)
    and what the policy checks."""

    fields: dict[str, str]
    signatures: list[Signature]
    key_ids: set[str]
    #: The ``Signature-Input`` and ``Signature`` dictionaries as parsed (``http_sf``'s values).
    inputs: dict[str, Any]
    values: dict[str, Any]


def parse_signed(headers: Mapping[str, str]) -> SignedRequest:
    """Parse the signature fields (``SignatureInvalid`` when missing or malformed)."""
    fields = field_lines(headers)
    signatures, inputs, values = _parse_signatures(fields)
    return SignedRequest(fields, signatures, _key_ids(signatures), inputs, values)


def field_lines(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case names; repeated names (in any case) joined with ", " in order."""
    fields: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        fields[lower] = f"{fields[lower]}, {value}" if lower in fields else value
    return fields


def digest_members(raw: str) -> dict[str, Any] | None:
    """``Content-Digest`` as a dictionary (``http_sf``'s values), or ``None`` if it is not one."""
    members = canonical_bytes(raw)
    if members is not None:
        return members
    try:
        return _dictionary(raw)
    except (ValueError, UnicodeError):
        return None


# --- the canonical forms, read without the general parser ----------------------------------
_SF_KEY = r"[a-z*][a-z0-9_\-.*]*"
# a run of plain characters, then escapes each followed by such a run (one class match per
# run, not an alternation per character: half the CPU of the fields' regexes)
_SF_STRING = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*(?:\\["\\][\x20\x21\x23-\x5b\x5d-\x7e]*)*"'
_SF_INTEGER = r"(?:0|-?[1-9][0-9]{0,14})"
_SF_PARAM = rf";{_SF_KEY}=(?:{_SF_STRING}|{_SF_INTEGER})"
_SF_INNER_LIST = rf"\((?:{_SF_STRING}(?: {_SF_STRING})*)?\)(?:{_SF_PARAM})*"
_CANONICAL_INPUTS = re.compile(rf"{_SF_KEY}={_SF_INNER_LIST}(?:, {_SF_KEY}={_SF_INNER_LIST})*")
_INPUT_MEMBER = re.compile(rf"({_SF_KEY})=(\(((?:{_SF_STRING}| )*)\)((?:{_SF_PARAM})*))")
_STRING = re.compile(_SF_STRING)
_PARAM = re.compile(rf";({_SF_KEY})=({_SF_STRING}|{_SF_INTEGER})")
_ESCAPED = re.compile(r"\\(.)")
_CANONICAL_BYTES = re.compile(
    rf"{_SF_KEY}=:[A-Za-z0-9+/]*={{0,2}}:(?:, {_SF_KEY}=:[A-Za-z0-9+/]*={{0,2}}:)*"
)
_BYTES_MEMBER = re.compile(rf"({_SF_KEY})=:([A-Za-z0-9+/]*={{0,2}}):")


def _sf_string(quoted: str) -> str:
    inner = quoted[1:-1]
    return _ESCAPED.sub(r"\1", inner) if "\\" in inner else inner


def _sf_bare(text: str) -> str | int:
    return _sf_string(text) if text[0] == '"' else int(text)


def canonical_inputs(value: str) -> dict[str, tuple[Any, str]] | None:
    """``Signature-Input`` in canonical form: label -> (the parsed member, its text);
    ``None`` for any other form."""
    if not _CANONICAL_INPUTS.fullmatch(value):
        return None
    found: dict[str, tuple[Any, str]] = {}
    for member in _INPUT_MEMBER.finditer(value):
        label, text, items, params = member.groups()
        names: list[tuple[str, dict[str, Any]]] = [
            (_sf_string(item), {}) for item in _STRING.findall(items)
        ]
        pairs = _PARAM.findall(params)
        parsed = {k: _sf_bare(v) for k, v in pairs}
        if label in found or len(parsed) != len(pairs):
            return None  # a repeated label or parameter: the general parser decides
        found[label] = ((names, parsed), text)
    return found


def canonical_bytes(value: str) -> dict[str, Any] | None:
    """A dictionary of byte sequences in canonical form (padded base64), as ``http_sf``
    parses it; ``None`` for any other form."""
    if not _CANONICAL_BYTES.fullmatch(value):
        return None
    found: dict[str, Any] = {}
    for label, encoded in _BYTES_MEMBER.findall(value):
        if len(encoded) % 4:
            return None
        decoded = base64.b64decode(encoded)
        if label in found or base64.b64encode(decoded).decode("ascii") != encoded:
            return None
        found[label] = (decoded, {})
    return found


# --- the general parser ----------------------------------------------------------------------
def _reject_duplicate(key: str, context: str) -> None:
    raise ValueError(f"duplicate {context} key {key!r}")


def _dictionary(value: str) -> dict[str, Any]:
    parsed = http_sf.parse(
        value.encode("ascii"), tltype="dictionary", on_duplicate_key=_reject_duplicate
    )
    if not isinstance(parsed, dict):  # tltype="dictionary" gives a dict; kept explicit
        raise ValueError("not a structured dictionary")
    return parsed


def _parse_dictionary(name: str, value: str) -> dict[str, Any]:
    try:
        return _dictionary(value)
    except (ValueError, UnicodeError) as e:
        raise fail("malformed-signature", f"{name} is not a valid structured dictionary") from e


def _parse_signatures(
    fields: Mapping[str, str],
) -> tuple[list[Signature], dict[str, Any], dict[str, Any]]:
    if "signature-input" not in fields or "signature" not in fields:
        raise fail(
            "missing-signature",
            "the request is not signed: Signature-Input and Signature headers are required",
        )
    canonical = canonical_inputs(fields["signature-input"])
    if canonical is None:
        inputs = _parse_dictionary("Signature-Input", fields["signature-input"])
        texts: dict[str, str] = {}
    else:
        inputs = {label: member for label, (member, _) in canonical.items()}
        texts = {label: text for label, (_, text) in canonical.items()}
    values = canonical_bytes(fields["signature"])
    if values is None:
        values = _parse_dictionary("Signature", fields["signature"])
    if not inputs:
        raise fail("missing-signature", "Signature-Input holds no signature")
    if len(inputs) > MAX_SIGNATURES:
        raise fail("malformed-signature", f"at most {MAX_SIGNATURES} signatures per request")
    signatures = [
        Signature(label, _components(label, member), dict(member[1]), member, values.get(label))
        for label, member in inputs.items()
    ]
    for sig in signatures:
        sig.serialized = texts.get(sig.label)
    return signatures, inputs, values


def _components(label: str, member: Any) -> list[Component]:
    if not (isinstance(member, tuple) and isinstance(member[0], list)):
        raise fail("malformed-signature", f"Signature-Input member {label!r} is not a list")
    components: list[Component] = []
    for value, params in member[0]:
        if not isinstance(value, str):  # a token or a number
            raise fail(
                "malformed-signature",
                f"signature {label!r}: covered components must be quoted strings",
            )
        components.append(Component(value, tuple(params.items())))
    return components


def _key_ids(signatures: Sequence[Signature]) -> set[str]:
    key_ids = {
        s.params["keyid"]
        for s in signatures
        if isinstance(s.params.get("keyid"), str) and len(s.params["keyid"]) <= MAX_KEY_ID_LENGTH
    }
    if not key_ids:
        raise fail("malformed-signature", "the signature has no keyid parameter")
    return key_ids
