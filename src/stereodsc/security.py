"""CURVE keys for the camera -> host link: encryption plus an allow-list of camera public keys.

The host is the CURVE server: it holds its own keypair and a folder of the public keys of the
cameras it accepts (ZAP, checked by `zmq.auth.thread.ThreadAuthenticator` in `stereodsc.transport`).
A camera holds its own keypair and the host's public key. Key files are the ones
`zmq.auth.create_certificates` writes: ``NAME.key`` (public, safe to copy) and ``NAME.key_secret``
(public + secret, mode 0600, never leaves the machine it was made for).

A camera's identity is bound to its key by the key file's name in the host's allow-list folder:
``rig<R>_cam<C>.key`` lets that key send as rig R, camera C and as nothing else (the host rejects and
counts a frame whose ids differ: `ServerCurve.identities`). Make such a key with
``stereodsc keys new rig1_cam0``. The name is the whole map: no second file to keep in step with the
folder, and ``ls`` shows who may send as what. A key file named otherwise is *unbound*: its camera may
send under any ids (logged at start-up; refused with ``[security] require_bound_keys = true``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import zmq.auth

from stereodsc.errors import ConfigError


@dataclass(frozen=True)
class ServerCurve:
    """The host's keypair and the z85 public keys of the cameras it lets in."""

    public: bytes
    secret: bytes
    allowed: frozenset[bytes]
    allowed_dir: str
    identities: dict[str, tuple[int, int]] = field(default_factory=dict)
    """z85 public key -> the (rig, camera) ids it may send as (keys named ``rig<R>_cam<C>.key``)."""
    unbound: tuple[str, ...] = ()
    """The allowed key files not named ``rig<R>_cam<C>.key``: their cameras may send under any ids."""


BOUND_KEY_NAME = re.compile(r"rig(\d+)_cam(\d+)\.key")
"""A camera key file bound to (rig, camera): ``rig1_cam0.key``."""


@dataclass(frozen=True)
class ClientCurve:
    """A camera's keypair and the host's public key (all z85)."""

    public: bytes
    secret: bytes
    server_public: bytes


def new_keypair(name: str, folder: str | Path) -> tuple[Path, Path]:
    """Write ``folder/NAME.key`` and ``folder/NAME.key_secret`` (0600); return (public, secret) paths.

    Refuses to overwrite an existing keypair: replacing a key silently would lock a camera out.
    """
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name (e.g. 'cam1' or 'host')")
    out = Path(folder)
    public, secret = out / f"{name}.key", out / f"{name}.key_secret"
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing:
        raise ConfigError(f"{', '.join(existing)} already exist(s); remove it first to make a new key")
    out.mkdir(parents=True, exist_ok=True)
    made_public, made_secret = zmq.auth.create_certificates(out, name)
    os.chmod(made_secret, 0o600)
    return Path(made_public), Path(made_secret)


def _load_keypair(path: str, what: str) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"[security] {what} = {path!r}: cannot read a key: {e}") from e
    if secret is None:
        raise ConfigError(f"[security] {what} = {path!r} holds no secret key (use the .key_secret file)")
    return public, secret


def load_server_curve(server_secret: str, allowed_keys: str, require_bound: bool = False) -> ServerCurve:
    """The host's side from its ``[security]`` keys; every ``*.key`` in `allowed_keys` is a camera let in,
    bound to its ids when named ``rig<R>_cam<C>.key`` (`require_bound`: every key must be)."""
    public, secret = _load_keypair(server_secret, "server_secret")
    folder = Path(allowed_keys)
    if not folder.is_dir():
        raise ConfigError(f"[security] allowed_keys = {allowed_keys!r} is not a folder of camera public keys")
    identities: dict[str, tuple[int, int]] = {}
    unbound: list[str] = []
    allowed: set[bytes] = set()
    for path in sorted(folder.glob("*.key")):
        try:
            key, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"[security] allowed_keys: {path} is not a public key file: {e}") from e
        allowed.add(key)
        bound = BOUND_KEY_NAME.fullmatch(path.name)
        if bound is None:
            unbound.append(path.name)
            continue
        ids = (int(bound[1]), int(bound[2]))
        if identities.setdefault(key.decode(), ids) != ids:
            raise ConfigError(
                f"[security] allowed_keys: {path.name} binds a key that another file binds to rig "
                f"{identities[key.decode()][0]} camera {identities[key.decode()][1]}: one key, one camera"
            )
    if not allowed:
        raise ConfigError(f"[security] allowed_keys = {allowed_keys!r} holds no *.key file: no camera could connect")
    if require_bound and unbound:
        raise ConfigError(
            f"[security] require_bound_keys = true, but {', '.join(unbound)} in {allowed_keys} is not bound to a "
            "camera: rename each to rig<R>_cam<C>.key (the ids that camera sends)"
        )
    return ServerCurve(public, secret, frozenset(allowed), allowed_keys, identities, tuple(unbound))


def load_client_curve(secret: str, server_public: str) -> ClientCurve:
    """A camera's side from its ``[security]`` keys."""
    public, own_secret = _load_keypair(secret, "secret")
    try:
        host_public, _ = zmq.auth.load_certificate(server_public)
    except (OSError, ValueError) as e:
        raise ConfigError(f"[security] server_public = {server_public!r}: cannot read a key: {e}") from e
    return ClientCurve(public, own_secret, host_public)
