"""Ed25519 signatures on model artifacts: the one place that signs and checks them.

metadata.json lists every file the loader reads with its sha256, so signing its exact bytes
signs the whole model. The signature sits beside it as ``metadata.json.sig``: the base64 of
the raw 64-byte Ed25519 signature over metadata.json's bytes, and a newline. File hashes catch
corruption; only a signature catches someone who rewrote the files and the hashes together.

With ``CHARGECAST_MODEL_PUBLIC_KEY`` set, :func:`verify` reads metadata.json and its signature,
nothing else, and returns the digest of the bytes it verified; callers then load the model
pinned to that digest, so the model that is served is the one whose signature was checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from chargecast.model.artifact import METADATA_FILE, SIGNATURE_FILE, read_verified
from chargecast.model.publish import place

PUBLIC_KEY_SETTING = "CHARGECAST_MODEL_PUBLIC_KEY"
SIGNATURE_BYTES = 64
MAKE_KEY = "make one with `openssl genpkey -algorithm ed25519 -out PRIVATE.pem`"


class SigningError(Exception):
    """A key that cannot be used, or an artifact whose signature is missing or wrong."""


class UnsignedError(SigningError):
    """The artifact has no signature at all."""


class MismatchError(SigningError):
    """A well-formed signature that this key does not verify: another key signed it, or the metadata changed."""


@dataclass(frozen=True)
class Verified:
    """What a good signature vouches for: this directory's metadata.json with this sha256."""

    root: Path  # the resolved directory: ``models/current`` may be re-pointed later
    digest: str | None  # sha256 of the verified metadata.json bytes (None: nothing to pin)
    signature: bytes | None  # the signature file's bytes, to copy along with the model


def _kind(key: object) -> str:
    """A key's algorithm in words, for the message that refuses it."""
    for types, words in (
        ((rsa.RSAPrivateKey, rsa.RSAPublicKey), "an RSA"),
        ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "an EC"),
        ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "an Ed448"),
    ):
        if isinstance(key, types):
            return words
    return "an unsupported"


def _read(path: Path, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"{name} {path}: cannot read the key ({exc.strerror or exc})") from None


def private_key(path: Path, name: str = "--key") -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file; ``name`` is the flag the message names."""
    data = _read(path, name)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted: cryptography wants a password
        raise SigningError(f"{name} {path}: the key is encrypted; give an unencrypted Ed25519 PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        hint = " (that is a public key: signing needs the private one)" if b"PUBLIC KEY" in data else ""
        raise SigningError(f"{name} {path}: not a PEM private key{hint}; {MAKE_KEY}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{name} {path}: {_kind(key)} key; model signatures use Ed25519 ({MAKE_KEY})")
    return key


def public_key(path: Path, name: str = PUBLIC_KEY_SETTING) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file; a private key is refused, it has no place on a server."""
    return public_key_pem(path, name)[0]


def public_key_pem(path: Path, name: str = PUBLIC_KEY_SETTING) -> tuple[Ed25519PublicKey, bytes]:
    """:func:`public_key` and the bytes it was read from, for whoever passes the same key on."""
    data = _read(path, name)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        if b"PRIVATE KEY" in data:
            raise SigningError(
                f"{name} {path}: a private key; give its public half "
                "(`openssl pkey -in PRIVATE.pem -pubout -out PUBLIC.pem`), the private key stays with the signer"
            ) from None
        raise SigningError(f"{name} {path}: not a PEM public key (`openssl pkey -in PRIVATE.pem -pubout`)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{name} {path}: {_kind(key)} key; model signatures use Ed25519")
    return key, data


def fingerprint(key: Ed25519PublicKey) -> str:
    """A short name for a public key, so a signer and a server can tell they hold the same one."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def signature_file(key: Ed25519PrivateKey, metadata: bytes) -> bytes:
    """The bytes of ``metadata.json.sig`` for ``metadata``: base64 of the raw signature, a newline."""
    return base64.b64encode(key.sign(metadata)) + b"\n"


def sign(directory: Path, key: Ed25519PrivateKey) -> tuple[Path, str]:
    """Sign an existing artifact; returns the signature file and the model's version.

    Every listed file is checked against metadata.json first: signing vouches for the model,
    so a corrupt one is refused rather than blessed. The signature is written in one step
    into the very version that was checked.
    """
    root = Path(directory).resolve()
    metadata, contents = read_verified(root)
    try:
        target = place(root, SIGNATURE_FILE, signature_file(key, contents[METADATA_FILE]))
    except OSError as exc:
        raise SigningError(f"{Path(directory) / SIGNATURE_FILE}: cannot write ({exc.strerror or exc})") from None
    return target, str(metadata["version"])


def _decode(data: bytes, where: Path) -> bytes:
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != SIGNATURE_BYTES:
        raise SigningError(f"{where}: not a signature (expected the base64 of {SIGNATURE_BYTES} bytes)")
    return raw


def verify(directory: Path, key: Ed25519PublicKey) -> Verified:
    """Check metadata.json's signature; reads those two files and nothing else of the artifact."""
    root = Path(directory).resolve()
    meta, sig = root / METADATA_FILE, root / SIGNATURE_FILE
    try:
        metadata = meta.read_bytes()
    except OSError as exc:
        raise SigningError(f"{Path(directory) / METADATA_FILE}: cannot read ({exc.strerror or exc})") from None
    try:
        signed = sig.read_bytes()
    except FileNotFoundError:
        raise UnsignedError(
            f"{Path(directory) / SIGNATURE_FILE}: not found; {PUBLIC_KEY_SETTING} is set, so only a signed model "
            "is used (sign it with `chargecast sign DIR --key PRIVATE.pem`)"
        ) from None
    except OSError as exc:
        raise SigningError(f"{Path(directory) / SIGNATURE_FILE}: cannot read ({exc.strerror or exc})") from None
    try:
        key.verify(_decode(signed, Path(directory) / SIGNATURE_FILE), metadata)
    except InvalidSignature:
        raise MismatchError(
            f"{Path(directory) / SIGNATURE_FILE}: the signature does not match metadata.json under "
            f"{PUBLIC_KEY_SETTING} ({fingerprint(key)}): the metadata was changed, or signed by another key"
        ) from None
    return Verified(root, hashlib.sha256(metadata).hexdigest(), signed)


def check(directory: Path, key_path: Path | None, pinned: str | None = None) -> Verified:
    """Where to load the model from and the metadata.json sha256 to pin that load to.

    Without a public key: ``directory`` and ``pinned`` as given, no signature. With one, the
    signature is verified first and the load is pinned to the bytes it covered (which must
    agree with ``pinned``, ``CHARGECAST_MODEL_SHA256``, when that is set too).
    """
    if key_path is None:
        return Verified(Path(directory), pinned, None)
    verified = verify(directory, public_key(key_path))
    if pinned is not None and pinned != verified.digest:
        raise SigningError(
            f"{Path(directory) / METADATA_FILE}: signed, but its sha256 is not CHARGECAST_MODEL_SHA256 ({pinned[:12]}…)"
        )
    return verified
