"""A ready-to-run signed example: a POSIX shell script (openssl + curl) that earns points for a
member and reads the member's balance against a running ``coalition serve``.

It signs at run time (RFC 9421, hmac-sha256, ``created`` and a fresh ``nonce`` per request), so
it works whenever it is run, not only within the 300 s a pre-computed signature would live.
The recipe is the one docs/signing.md explains line by line.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from cli.simulation.keys import DemoKeys, api_example
from coalition.config import Settings
from coalition.money import exponent

_SCRIPT = r"""#!/bin/sh
# A signed request (RFC 9421, hmac-sha256) against coalition serve: an earn, then the balance.
# Needs openssl (3.0+) and curl. Override BASE to reach another server.
set -eu
BASE=${BASE:-__BASE__}
KEY_ID=__KEY_ID__
SECRET=__SECRET__

# the HMAC key is the base64url-decoded secret, as hex for openssl
PADDED=$SECRET
while [ $(( ${#PADDED} % 4 )) -ne 0 ]; do PADDED="$PADDED="; done
KEY_HEX=$(printf '%s' "$PADDED" | tr '_-' '/+' | openssl base64 -d -A | od -An -v -tx1 | tr -d ' \n')

signed() {  # signed METHOD PATH [JSON-BODY]
    method=$1
    target="$BASE$2"
    body=${3-}
    created=$(date +%s)
    nonce=$(openssl rand -hex 16)
    if [ -n "$body" ]; then
        digest="sha-256=:$(printf '%s' "$body" | openssl dgst -sha256 -binary | openssl base64 -A):"
        params="(\"@method\" \"@target-uri\" \"content-digest\");created=$created;keyid=\"$KEY_ID\";alg=\"hmac-sha256\";nonce=\"$nonce\""
        base=$(printf '"@method": %s\n"@target-uri": %s\n"content-digest": %s\n"@signature-params": %s' \
            "$method" "$target" "$digest" "$params")
    else
        params="(\"@method\" \"@target-uri\");created=$created;keyid=\"$KEY_ID\";alg=\"hmac-sha256\";nonce=\"$nonce\""
        base=$(printf '"@method": %s\n"@target-uri": %s\n"@signature-params": %s' \
            "$method" "$target" "$params")
    fi
    signature=$(printf '%s' "$base" \
        | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$KEY_HEX" -binary | openssl base64 -A)
    if [ -n "$body" ]; then
        curl -sS -X "$method" "$target" \
            -H "Content-Type: application/json" \
            -H "Idempotency-Key: $(openssl rand -hex 16)" \
            -H "Content-Digest: $digest" \
            -H "Signature-Input: sig1=$params" \
            -H "Signature: sig1=:$signature:" \
            --data-binary "$body"
    else
        curl -sS "$target" -H "Signature-Input: sig1=$params" -H "Signature: sig1=:$signature:"
    fi
    echo
}

REFERENCE="example-$(openssl rand -hex 6)"
signed POST /v1/earns "__EARN_HEAD__\"reference\":\"$REFERENCE\"__EARN_TAIL__"
signed GET /v1/members/__MEMBER__/balance
"""


def signed_example_script(
    *, base_url: str, key_id: str, secret: str, member_id: str, amount: str, currency: str
) -> str:
    """The shell script: earn ``amount`` ``currency`` for ``member_id``, then read its balance.

    ``key_id``/``secret`` are an hmac-sha256 partner key with the ``earn`` and ``read`` scopes.
    """
    head = json.dumps({"member_id": member_id}, separators=(",", ":"))[:-1] + ","
    tail = "," + json.dumps({"amount": amount, "currency": currency}, separators=(",", ":"))[1:]
    return (
        _SCRIPT.replace("__BASE__", shlex.quote(base_url))
        .replace("__KEY_ID__", shlex.quote(key_id))
        .replace("__SECRET__", shlex.quote(secret))
        .replace("__MEMBER__", member_id)
        .replace("__EARN_HEAD__", head.replace('"', '\\"'))
        .replace("__EARN_TAIL__", tail.replace('"', '\\"'))
    )


#: Where ``coalition demo`` writes the example, in its working directory.
DEMO_SCRIPT = "signed-example.sh"


def demo_lines(settings: Settings, keys: DemoKeys) -> list[str]:
    """What ``coalition demo`` prints about the API: its keys and a ready-to-run signed example.

    Writes :data:`DEMO_SCRIPT` (the first partner's key, a demo member) to the working directory.
    """
    lines = api_example(settings, keys)
    slug, new = next(iter(keys.partners.items()), (None, None))
    if new is None or new.secret is None or keys.member_id is None or slug is None:
        return lines
    script = Path(DEMO_SCRIPT).resolve()
    script.write_text(
        signed_example_script(
            base_url=settings.public_url,
            key_id=new.key.id,
            secret=new.secret,
            member_id=keys.member_id,
            amount="12.50" if exponent(keys.currencies[slug]) else "1250",
            currency=keys.currencies[slug],
        )
    )
    script.chmod(0o700)  # it holds a key's secret
    return [
        *lines,
        "",
        f"A signed example request (RFC 9421, the {slug} key): {script}",
        "  it signs at run time with openssl and sends with curl: an earn, then the balance.",
        "  Run the API here in one shell and the example in another:",
        f"    cd {script.parent} && {shutil.which('coalition') or 'coalition'} serve",
        f"    sh {script}",
    ]
