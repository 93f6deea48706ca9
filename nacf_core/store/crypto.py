"""Encryption at rest for templates, device secrets and PAD fingerprints (AES-256-GCM).

The key never comes from the database: pass it to ``open_store(url, key=...)`` or set

- ``NACF_TEMPLATE_KEY``: the 32-byte key, base64 (standard or url-safe), or
- ``NACF_TEMPLATE_KEY_FILE``: a file holding that base64 text (or the 32 raw bytes).

A text of another form (a password, a hex string) is refused, never used as a key.

Make one with ``python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"``
or :func:`create_key_file`.

Each ciphertext is stored with the id of its key (a hash of the key, safe to log) and a
fresh 96-bit nonce.  The associated data binds it to its row (kind, user id, version,
...), so a ciphertext copied into another user's row, or another version, fails to
decrypt instead of authenticating someone else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..config import fsync_dir, read_regular_file
from ..errors import FailedPrecondition, InvalidArgument

__all__ = ["Cipher", "load_key", "key_source", "create_key_file", "KEY_ENV",
           "KEY_FILE_ENV"]

KEY_ENV = "NACF_TEMPLATE_KEY"
KEY_FILE_ENV = "NACF_TEMPLATE_KEY_FILE"
KEY_BYTES = 32
#: the largest key file read (a key file holds 44 characters of base64 and a newline)
MAX_KEY_FILE_BYTES = 4096


def _is_raw_key(text: bytes, raw: bool) -> bool:
    """Whether ``text`` (a key file's bytes, ``raw``) is a raw 32-byte key: not text."""
    return raw and len(text) == KEY_BYTES and not all(32 <= b < 127 or b in b"\t\n\r"
                                                      for b in text)


def _decode_key(text: bytes, source: str, raw: bool = False) -> bytes:
    """The key in ``text``: base64 of 32 bytes, or with ``raw`` (a key file) the 32 raw
    bytes themselves, which a random key never spells as text: a 32-character text (a
    password, the hex of 16 bytes) is refused, not taken for its ASCII codes."""
    s = text.strip()
    # validate=True: without it base64 drops the characters outside its alphabet, and a
    # key mistyped with a stray one ('!', '.', a space) decoded to another key
    padded = s + b"=" * (-len(s) % 4)
    for alt in (b"+/", b"-_"):  # standard, url-safe
        try:
            decoded = base64.b64decode(padded, altchars=alt, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(decoded) == KEY_BYTES:
            return decoded
    bad = sorted({chr(c) for c in s if not (chr(c).isalnum() and c < 128) and c not in b"+/-_="})
    if bad and not _is_raw_key(text, raw):
        raise InvalidArgument(
            f"The template key from {source} must be {KEY_BYTES} bytes, base64-encoded "
            f"(44 characters); it holds {', '.join(repr(c) for c in bad[:5])}, which base64 "
            "does not use: is it mistyped? (make a key with `nacf store new-key`).")
    if _is_raw_key(text, raw):
        return bytes(text)  # raw key bytes (base64 of 32 bytes is 44 characters)
    # nacf before 2026-11-27 took a 32-character text as its own ASCII codes: a store
    # encrypted so opens with the base64 of that text
    legacy = (" A store an older nacf encrypted with this text as the key opens with its "
              "base64 instead (`printf %s TEXT | base64`)." if len(s) == KEY_BYTES else "")
    raise InvalidArgument(
        f"The template key from {source} must be {KEY_BYTES} bytes, base64-encoded "
        f"(44 characters){f', or {KEY_BYTES} raw bytes' if raw else ''}; got {len(s)} "
        f"characters that do not decode to {KEY_BYTES} bytes (make a key with "
        f"`nacf store new-key`).{legacy}"
    )


def load_key(key: bytes | str | os.PathLike | None = None) -> bytes:
    """Resolve the 32-byte key.

    Parameters
    ----------
    key : bytes | str | path-like | None
        32 raw bytes, a base64 string, or a :class:`pathlib.Path` to a key file.
        ``None`` reads ``NACF_TEMPLATE_KEY``, then ``NACF_TEMPLATE_KEY_FILE``.

    Raises
    ------
    FailedPrecondition
        No key configured.
    InvalidArgument
        The key is malformed (the message says what was expected).
    """
    if isinstance(key, (bytes, bytearray, memoryview)):
        key = bytes(key)
        if len(key) == KEY_BYTES:
            return key
        return _decode_key(key, "the 'key' parameter")
    if isinstance(key, os.PathLike):
        return _read_key_file(Path(key))
    if isinstance(key, str):
        # a lone surrogate (no UTF-8) is no base64 either: refused as a malformed key
        return _decode_key(key.encode("utf-8", "replace"), "the 'key' parameter")
    if key is not None:
        raise TypeError(
            f"'key' must be bytes, a base64 str, a path or None, got {type(key).__name__}."
        )
    env = os.environ.get(KEY_ENV)
    if env:
        # bytes that are no UTF-8 come as surrogates (os.environ): no base64 either
        return _decode_key(env.encode("utf-8", "replace"), f"${KEY_ENV}")
    path = os.environ.get(KEY_FILE_ENV)
    if path:
        return _read_key_file(Path(path))
    raise FailedPrecondition(
        f"No template encryption key configured: set {KEY_ENV} (base64 of 32 bytes) or "
        f"{KEY_FILE_ENV} (path to a key file), or pass key= to open_store()."
    )


def key_source(key: bytes | str | os.PathLike | None = None) -> str:
    """Where :func:`load_key` takes ``key`` from, for a message: the key file (and the
    variable that named it), ``$NACF_TEMPLATE_KEY`` or the 'key' parameter."""
    if isinstance(key, os.PathLike):
        return f"the key file {os.fsdecode(key)!r}"
    if key is not None:
        return "the 'key' parameter"
    if os.environ.get(KEY_ENV):
        return f"${KEY_ENV}"
    path = os.environ.get(KEY_FILE_ENV)
    if path:
        return f"the key file {path!r} ({KEY_FILE_ENV})"
    return "no key"


def _read_key_file(path: Path) -> bytes:
    """The key in the regular file ``path``: a FIFO, a device (``/dev/zero``) or a file
    over :data:`MAX_KEY_FILE_BYTES` is refused, never read."""
    try:
        data = read_regular_file(path, "template key file", MAX_KEY_FILE_BYTES)
    except InvalidArgument as exc:
        msg = str(exc)
        raise FailedPrecondition(msg[:1].upper() + msg[1:]) from None
    return _decode_key(data, f"the key file {str(path)!r}", raw=True)


def create_key_file(path: str | os.PathLike) -> bytes:
    """Write a fresh random key (base64) to ``path`` with mode 0600 and return it.

    Refuses to overwrite an existing file (raises ``FileExistsError``).  The key is on
    disk (file and directory entry flushed) when this returns, since a store may be
    encrypted with it next; a write that fails removes the file it created, so no part
    of a key is left behind.
    """
    key = os.urandom(KEY_BYTES)
    path = os.fspath(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(key) + b"\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return key


class Cipher:
    """AES-256-GCM with a key id and row-binding associated data."""

    def __init__(self, key: bytes | str | os.PathLike | None = None) -> None:
        raw = load_key(key)
        #: where the key came from, for messages (never the key itself)
        self.source = key_source(key)
        self._aead = AESGCM(raw)
        self.key_id = hashlib.sha256(b"nacf-template-key-id\0" + raw).hexdigest()[:16]

    @staticmethod
    def aad(*parts: object) -> bytes:
        """Associated data from the row's identity, e.g. ``aad("template", uid, 3)``."""
        return "\x1f".join(str(p) for p in parts).encode("utf-8")

    def encrypt(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        """Return ``(key_id, nonce + ciphertext)``."""
        nonce = os.urandom(12)
        return self.key_id, nonce + self._aead.encrypt(nonce, bytes(plaintext), aad)

    def decrypt(self, key_id: str, blob: bytes, aad: bytes, what: str) -> bytes:
        """Decrypt; raise ``FailedPrecondition`` naming ``what`` on a wrong key or a
        ciphertext that was tampered with or moved to another row."""
        if key_id != self.key_id:
            raise FailedPrecondition(
                f"{what} was encrypted with key id {key_id}, but the configured template "
                f"key has id {self.key_id}: configure the key this store was written with "
                f"(or rotate_key() from it)."
            )
        blob = bytes(blob)
        try:
            if len(blob) < 12 + 16:  # no room for the nonce and the tag: truncated
                raise InvalidTag
            return self._aead.decrypt(blob[:12], blob[12:], aad)
        except InvalidTag:
            raise FailedPrecondition(
                f"{what} failed authentication: the ciphertext was altered or does not "
                f"belong to this row."
            ) from None
