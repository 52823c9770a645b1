"""Files of an identity: atomic writes and private keys that nobody else can read.

Invariants, and why:

* **A file is whole or absent.**  `write_atomic` writes a temporary file in the same
  folder, fsyncs it, gives it its mode, renames it over the target and fsyncs the folder:
  a crash or a power cut leaves the old certificate (or key, or state) or the new one,
  never half of one, which a TLS link would refuse and a restart could not parse.
* **A private key is the owner's only.**  A key file is created with mode 0600 (O_EXCL:
  never over another process's new key) in a folder made 0700, and `load_private_key`
  refuses a key that the group or others may read, naming the file: a key that leaked is
  not an identity any more, and the operator must decide (chmod, or a new registration).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class IdentityError(Exception):
    """A local problem with the site's identity files (a key readable by others, a missing
    token file): the operator must act; retrying the network does not help."""


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes, mode: int) -> None:
    """Replace `path` by `data` with `mode`, atomically and durably (see the module)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)        # the umask may have taken bits away
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def check_private(path: Path) -> None:
    """Refuse a key file the group or others may read (or write)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(f"{path}: private key is readable by group or others (mode {mode:04o}); "
                            f"refused: run `chmod 600 {path}` if it never left this machine, else remove "
                            "it and register again")


def load_private_key(path: str | os.PathLike, create: bool = True) -> ec.EllipticCurvePrivateKey:
    """The EC P-256 key in `path` (PEM, unencrypted), made with mode 0600 if missing and
    `create`; IdentityError naming the file if it is readable by others, unreadable, or
    not a P-256 key."""
    path = Path(path)
    if not path.exists() and create:
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        key = new_key()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass                           # another process made it first: use theirs
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(key_pem(key))
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(path.parent)
    try:
        check_private(path)
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"{path}: no private key") from None
    except PermissionError as exc:
        raise IdentityError(f"{path}: cannot read the private key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IdentityError(f"{path}: not an EC P-256 key (the registration uses ECDSA P-256)")
    return key
