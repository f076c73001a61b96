"""The signature base built without the library is, byte for byte, the library's.

The target URI is split by our own :func:`partners.signatures.base.split_url` (the library's
splitter is private); every derived component of a URL it accepts is what the library's public
component resolver gives, and what it refuses is left to the library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from http_message_signatures import HTTPMessageSignaturesException, HTTPSignatureComponentResolver
from hypothesis import given
from hypothesis import strategies as st

from partners.signatures import parse_signed
from partners.signatures.base import signature_base, split_url

_UNRESERVED = "abcXYZ019._~-"
_SUB_DELIMS = "!$&'()*+,;="
_PCT = st.sampled_from(["%20", "%2F", "%7e", "%C3%A9"])


def _run(alphabet: str, *, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.lists(
        st.one_of(st.sampled_from(list(alphabet)), _PCT), min_size=min_size, max_size=8
    ).map("".join)


_SCHEMES = st.sampled_from(["http", "https", "HTTP", "HtTpS", "ftp", "x+y.z-1"])
_HOSTS = _run(_UNRESERVED + _SUB_DELIMS, min_size=1)
_PORTS = st.one_of(st.none(), st.sampled_from(["", "80", "443", "080", "0443", "8080", "1"]))
_PATHS = st.one_of(st.just(""), _run(_UNRESERVED + _SUB_DELIMS + ":@/").map(lambda p: "/" + p))
_QUERIES = st.one_of(st.none(), _run(_UNRESERVED + _SUB_DELIMS + ":@/?"))


@dataclass
class _Request:
    method: str
    url: str
    headers: dict[str, str]


def _resolver(method: str, url: str) -> Any:
    """The library's public component resolver for a request without header fields."""
    return HTTPSignatureComponentResolver(_Request(method, url, {}))  # type: ignore[no-untyped-call]


@st.composite
def _urls(draw: st.DrawFn) -> str:
    port, query = draw(_PORTS), draw(_QUERIES)
    url = f"{draw(_SCHEMES)}://{draw(_HOSTS)}"
    url += "" if port is None else f":{port}"
    url += draw(_PATHS)
    return url if query is None else f"{url}?{query}"


_DERIVED = ("@method", "@target-uri", "@authority", "@scheme", "@path", "@query", "@request-target")
_COVERED = " ".join(f'"{c}"' for c in _DERIVED)
_ALL_DERIVED = parse_signed(
    {"Signature-Input": f'sig1=({_COVERED});created=1;keyid="k"', "Signature": "sig1=:AAAA:"}
).signatures[0]


@given(_urls(), st.sampled_from(["GET", "POST", "DELETE"]))
def test_a_split_url_gives_the_library_resolvers_derived_components(url: str, method: str) -> None:
    assert split_url(url) is not None
    base = signature_base(_ALL_DERIVED, method=method, url=url, fields={})
    assert base is not None
    built = dict(line.split(": ", 1) for line in base.decode().split("\n")[:-1])
    resolver = _resolver(method, url)
    assert built == {
        '"@method"': resolver.get_method(),
        '"@target-uri"': resolver.get_target_uri(),
        '"@authority"': resolver.get_authority(),
        '"@scheme"': resolver.get_scheme(),
        '"@path"': resolver.get_path(),
        '"@query"': resolver.get_query(),
        '"@request-target"': resolver.get_request_target(),
    }


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pw@api.example/v1",  # user info: the library drops it
        "https://api.example/v1#part",  # a fragment: the library drops it
        "https://[::1]:8443/v1",  # an IP literal: the library validates it
        "https://[v1.x]/v1",
    ],
)
def test_what_split_url_refuses_but_the_library_reads_is_left_to_the_library(url: str) -> None:
    assert split_url(url) is None
    _resolver("GET", url)  # the library reads it


@pytest.mark.parametrize(
    "url",
    [
        "/v1/me",  # relative
        "https:///v1/me",  # no host
        "https://api.example/v1 me",  # a space
        "https://api.example/v1/%zz",  # a broken escape
        "https://api.example/v1/caf\u00e9",  # not encoded
        "https://api.example:8x/v1",  # a port that is not one
    ],
)
def test_a_url_both_refuse(url: str) -> None:
    assert split_url(url) is None
    with pytest.raises(HTTPMessageSignaturesException):
        _resolver("GET", url)


def test_an_unusable_url_leaves_the_base_to_the_library() -> None:
    signed = parse_signed(
        {
            "Signature-Input": 'sig1=("@method" "@target-uri");created=1;keyid="k"',
            "Signature": "sig1=:AAAA:",
        }
    )
    (sig,) = signed.signatures
    for url in ("https://[::1]/v1/me", "https://api.example/v1 me"):
        assert signature_base(sig, method="GET", url=url, fields=signed.fields) is None
    built = signature_base(sig, method="GET", url="https://api.example/v1/me", fields={})
    assert built == (
        b'"@method": GET\n"@target-uri": https://api.example/v1/me\n'
        b'"@signature-params": ("@method" "@target-uri");created=1;keyid="k"'
    )
