"""Secrets taken out of error text before it is stored, logged or shown to an operator."""

from __future__ import annotations

import re

MASK = "***"

# The userinfo of any URL (``ftp://user:password@host``): everything between
# ``scheme://`` and the last ``@`` of the authority, which ends at the first
# ``/``, ``?``, ``#`` or blank.
_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.\-]*://)[^\s/?#]*@", re.IGNORECASE)

# Query parameters (and ``name=value`` pairs in headers such as AWS's
# ``Authorization``) whose value is a credential, a signature or a token.
_SECRET_NAMES = (
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "awsaccesskeyid",
    "signature",
    "credential",
    "sig",
    "token",
    "access_token",
    "refresh_token",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "access_key",
    "secret_key",
    "api_key",
    "apikey",
)
_PARAMETER = re.compile(
    r"(?<![\w-])(?P<name>" + "|".join(re.escape(n) for n in _SECRET_NAMES) + r")=[^&\s#,;'\"]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the userinfo of every URL and the value of every secret parameter masked."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _PARAMETER.sub(lambda m: f"{m['name']}={MASK}", text)
