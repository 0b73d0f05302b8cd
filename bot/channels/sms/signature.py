"""``X-Twilio-Signature``: how Twilio signs the webhooks it sends (status callbacks, inbound SMS).

The signature is the base64 HMAC-SHA1, keyed with the account's auth token, of the full URL
Twilio called (scheme, host, path and query, exactly as configured) followed by every POST
parameter, sorted by name, as ``name + value`` with no separator. Requests whose body is not a
form (JSON webhooks with ``bodySHA256``) are not used by Tocsin and are not supported here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """The signature Twilio sends for a POST of ``params`` to ``url``.

    Parameters are sorted by name, then by value, so a name given several times signs the same
    whichever order the values came in.
    """
    payload = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def valid_twilio_signature(
    auth_token: str, url: str, params: Iterable[tuple[str, str]], signature: str | None
) -> bool:
    """True when ``signature`` is Twilio's for this request; compared in constant time."""
    if not signature or not auth_token:
        return False
    expected = twilio_signature(auth_token, url, params)
    given = signature.strip().encode("ascii", "replace")
    return hmac.compare_digest(expected.encode("ascii"), given)
