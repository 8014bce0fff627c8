"""Session tokens on the server side: made here, hashed here, and only hashes go further.

A token is 32 random bytes (256 bits, from the OS's CSPRNG) in URL-safe base64:
43 characters, within the protocol's 16-256. The store and the logs only ever
see ``token_hash(token)``, a SHA-256: a token is random, so a fast hash is as
safe as a slow one (nobody can guess a 256-bit preimage), and a token login
costs no password hash.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_BYTES = 32


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()
