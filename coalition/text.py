"""One rule for every text a partner or the operator sets: partner names, bonus and adjustment
reasons, dispute reasons, resolution notes, payment references, webhook descriptions.

A text is one line of at most a field's length, trimmed of the white space around it, and
holds none of :data:`FORBIDDEN`:

- C0 and C1 control characters and DEL (NUL, which PostgreSQL cannot store; CR and LF, which
  split a log line or a CSV row; escape, which drives a terminal; bell, tab...), and the line
  and paragraph separators U+2028 and U+2029;
- the bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069), which
  make a reader see the text in another order than it is stored (``"Acme\u202eRBE 001"`` reads
  as ``Acme 100 EBR``);
- lone surrogates (U+D800-U+DFFF), which are not text at all.

Every face uses it: the domain functions call :func:`clean` (so the API, the console and the
command line refuse the same input with the same words), and the API's request shapes build
their patterns from :data:`LINE_BODY`, so the OpenAPI document says the same thing.
:func:`neutralise` makes a text stored before the rule harmless to show.
"""

from __future__ import annotations

import re

from coalition.errors import ValidationFailed

#: The characters no text may hold, as the body of a regular expression's character class
#: (Python's ``re`` and ECMA 262 read it alike).
FORBIDDEN = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
#: A text of any length without a forbidden character (for a pattern of the API's shapes).
LINE_BODY = rf"[^{FORBIDDEN}]*"
#: What the rule says, in words, for problem documents.
RULE = "one line without control characters or bidirectional overrides"

_FORBIDDEN = re.compile(f"[{FORBIDDEN}]")
_SHOWN_INSTEAD = "\ufffd"


def clean(value: object, field: str, *, max_length: int, required: bool = True) -> str:
    """``value`` trimmed, when it is a text this service stores (see the module); otherwise
    :class:`ValidationFailed` at ``field``. An empty text (after trimming) is refused when
    ``required``, else returned as ``""``."""
    least = 1 if required else 0
    words = f"{least} to {max_length} characters, {RULE}"
    if not isinstance(value, str) or _FORBIDDEN.search(value) is not None:
        raise ValidationFailed.at(field, words)
    trimmed = value.strip()
    if len(trimmed) < least or len(trimmed) > max_length:
        raise ValidationFailed.at(field, words)
    return trimmed


def neutralise(value: str) -> str:
    """``value`` with every forbidden character shown as U+FFFD: what the console shows of a
    text stored before the rule (a bidi override reorders nothing, a newline breaks nothing)."""
    return _FORBIDDEN.sub(_SHOWN_INSTEAD, value)
