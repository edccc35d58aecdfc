"""Keyed groups: sealing datagrams with ChaCha20-Poly1305, and rejecting replays.

Sealed datagram (PROTOCOL.md section 8):

    offset  size  field
    0       2     magic "LC"
    2       1     version 1
    3       1     flags = 0x01 (sealed)
    4       2     key id
    6       8     sender id
    14      8     instance (big-endian)
    22      6     counter (big-endian)
    28      ..    ciphertext of the body without sender and instance,
                  then the 16-byte Poly1305 tag

The first 28 bytes are the associated data. Sender and instance move from the
body into the header, so sealing adds 24 + 16 - 19 = 21 bytes to a datagram of
a real node (19: sender and a 64-bit instance as msgpack), 29 at most. Each
(sender, instance) seals with its own subkey, HKDF-SHA256(group key, sender ||
instance), and the nonce is the 6-byte counter, which starts at 1 on every
start: nonces are unique by construction, never random. Receivers keep a
1024-counter replay window per (sender, instance) and the highest instance
per sender, so neither an old datagram nor an old start of a peer can be
played back.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from lanchat.errors import ConfigError

# `cryptography` is imported only where a key is used: a node without a key
# does not pay its ~7 MB of resident memory.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

KEY_BYTES: Final = 32
KEY_ID_BYTES: Final = 2  # a hint to skip foreign keys cheaply; the tag decides
SEALED_HEADER: Final = 28
TAG_BYTES: Final = 16
_COUNTER_BYTES: Final = 6  # 2**48 datagrams per start: centuries at LAN rates
_REPLAY_WINDOW: Final = 1024  # IPsec/DTLS use 64, WireGuard 8128; 1024 covers a burst
_WINDOW_MASK: Final = (1 << _REPLAY_WINDOW) - 1
# Subkeys (and replay windows) of this many senders are cached; oldest first out.
_MAX_SENDERS: Final = 4096
# scrypt: n=2**17, r=8 takes 128 MiB and ~0.5 s here, once per start: the
# RFC 7914 interactive-login cost raised 8x, since a LAN key guards far more.
SCRYPT_N: Final = 2**17
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
KEY_FILE_HEADER: Final = "lanchat-key-v1"


class OpenError(Exception):
    """A sealed datagram could not be opened; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def key_id(key: bytes) -> bytes:
    """The 2-byte id of a group key (a hash prefix, not secret)."""
    return hashlib.sha256(b"lanchat key id v1" + key).digest()[:KEY_ID_BYTES]


def key_from_passphrase(passphrase: str, group: str, port: int) -> bytes:
    """Derive a group key from a passphrase with scrypt, salted with the group identity."""
    if len(passphrase) < 8:
        raise ConfigError("passphrase is too short (at least 8 characters)")
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    salt = f"lanchat v1 group {group}:{port}".encode()
    kdf = Scrypt(salt=salt, length=KEY_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(passphrase.encode())


def new_key_text() -> str:
    """A new full-entropy key in key-file form."""
    return f"{KEY_FILE_HEADER} {secrets.token_hex(KEY_BYTES)}\n"


def parse_key_text(text: str, where: str) -> bytes:
    """The key in a key file's text; ConfigError if it is not one."""
    parts = text.split()
    if len(parts) != 2 or parts[0] != KEY_FILE_HEADER:
        raise ConfigError(f"{where} is not a lanchat key file (make one with lanchat keygen)")
    try:
        key = bytes.fromhex(parts[1])
    except ValueError:
        raise ConfigError(f"{where}: the key is not hexadecimal") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{where}: the key must be {KEY_BYTES} bytes")
    return key


def read_key_file(path: Path) -> bytes:
    """Read a key file (I/O kept to this one small function)."""
    try:
        return parse_key_text(path.read_text(), str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path} is not a lanchat key file (make one with lanchat keygen)"
        ) from None


def _subkey(key: bytes, sender: bytes, instance: int) -> ChaCha20Poly1305:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = b"lanchat v1 sender" + sender + instance.to_bytes(8, "big")
    return ChaCha20Poly1305(HKDF(hashes.SHA256(), KEY_BYTES, None, info).derive(key))


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")


@dataclass
class _Window:
    highest: int = 0
    mask: int = 0

    def accept(self, counter: int) -> bool:
        if counter > self.highest:
            shift = counter - self.highest
            self.mask = 1 if shift >= _REPLAY_WINDOW else (self.mask << shift | 1) & _WINDOW_MASK
            self.highest = counter
            return True
        offset = self.highest - counter
        if offset >= _REPLAY_WINDOW or self.mask >> offset & 1:
            return False
        self.mask |= 1 << offset
        return True


@dataclass
class KeyRing:
    """The keys a node holds: the first seals, every one opens (for rotation)."""

    keys: tuple[bytes, ...]
    _ciphers: OrderedDict[tuple[bytes, bytes, int], ChaCha20Poly1305] = field(
        default_factory=OrderedDict
    )

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("a key ring needs at least one key")
        for key in self.keys:
            if len(key) != KEY_BYTES:
                raise ConfigError(f"a group key is {KEY_BYTES} bytes")
        self.ids = [key_id(k) for k in self.keys]

    def cipher(self, key: bytes, sender: bytes, instance: int) -> ChaCha20Poly1305:
        """The (cached) subkey cipher of one sender's start."""
        slot = (key, sender, instance)
        cipher = self._ciphers.get(slot)
        if cipher is None:
            cipher = self._ciphers[slot] = _subkey(key, sender, instance)
            if len(self._ciphers) > _MAX_SENDERS:
                self._ciphers.popitem(last=False)
        return cipher


class Sealer:
    """Seals this node's datagrams with the ring's first key and a fresh counter each."""

    def __init__(self, ring: KeyRing, sender: bytes, instance: int) -> None:
        self.ring = ring
        self.sender = sender
        self.instance = instance
        self.counter = 0

    def seal(self, inner: bytes) -> bytes:
        """Seal a body (msgpack, without sender and instance) into a datagram."""
        self.counter += 1
        key = self.ring.keys[0]
        header = (
            b"LC\x01\x01"
            + self.ring.ids[0]
            + self.sender
            + self.instance.to_bytes(8, "big")
            + self.counter.to_bytes(_COUNTER_BYTES, "big")
        )
        cipher = self.ring.cipher(key, self.sender, self.instance)
        return header + cipher.encrypt(_nonce(self.counter), inner, header)


class Opener:
    """Opens sealed datagrams, rejecting forgeries, foreign keys and replays."""

    def __init__(self, ring: KeyRing) -> None:
        from cryptography.exceptions import InvalidTag

        self._invalid_tag = InvalidTag
        self.ring = ring
        self._windows: OrderedDict[tuple[bytes, int], _Window] = OrderedDict()
        self._latest: OrderedDict[bytes, int] = OrderedDict()  # highest instance per sender

    def open(self, data: bytes) -> tuple[bytes, int, bytes]:
        """(sender, instance, body) of a sealed datagram; OpenError if it must be dropped."""
        if len(data) < SEALED_HEADER + TAG_BYTES:
            raise OpenError("short")
        kid = data[4:6]
        sender = data[6:14]
        instance = int.from_bytes(data[14:22], "big")
        counter = int.from_bytes(data[22:SEALED_HEADER], "big")
        header = data[:SEALED_HEADER]
        body = None
        for key, ident in zip(self.ring.keys, self.ring.ids, strict=True):
            if ident != kid:
                continue
            try:
                body = self.ring.cipher(key, sender, instance).decrypt(
                    _nonce(counter), data[SEALED_HEADER:], header
                )
                break
            except self._invalid_tag:
                continue
        if body is None:
            raise OpenError("unknown key" if kid not in self.ring.ids else "forged")
        # Authentic. Now freshness: an older start of this sender, or a counter seen before.
        latest = self._latest.get(sender, -1)
        if instance < latest:
            raise OpenError("replayed")
        if instance > latest:
            self._latest[sender] = instance
            self._windows.pop((sender, latest), None)
        self._latest.move_to_end(sender)
        if len(self._latest) > _MAX_SENDERS:
            old_sender, old_instance = self._latest.popitem(last=False)
            self._windows.pop((old_sender, old_instance), None)
        window = self._windows.setdefault((sender, instance), _Window())
        if not window.accept(counter):
            raise OpenError("replayed")
        return sender, instance, body
