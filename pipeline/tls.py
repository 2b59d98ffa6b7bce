"""`--tls-auto`: a throw-away certificate authority and one certificate for a run's Dask cluster.

A SLURM scheduler must listen on the network for its workers, and a Dask scheduler runs whatever
code a connected client sends. Dask's mutual TLS closes that: only holders of a certificate signed
by the CA can connect. `--tls-auto` makes that one flag: a fresh CA signs one certificate that the
scheduler, the workers and the client all use; the CA's private key is never written (nothing else
will be signed), and the folder and the node key are readable by the user only. The files live in
the output folder, which the SLURM jobs read from the shared file system; a later run reuses them
while they are valid.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

from unsamflow.pipeline.errors import BadInputError

TLS_DIR = "tls"
VALID_DAYS = 30


def throwaway_tls(folder: str | Path) -> dict[str, Path]:
    """{"ca", "cert", "key"}: PEM files in `folder` (made if missing or expired, mode 0700 / 0600)."""
    folder = Path(folder)
    files = {"ca": folder / "ca.pem", "cert": folder / "node.pem", "key": folder / "node.key"}
    if all(p.is_file() for p in files.values()) and _valid(files["cert"]):
        return files
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise BadInputError("--tls-auto needs the 'cryptography' package: pip install 'unsamflow[slurm]'"
                            ) from None
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def build(subject: str, key, issuer: str, issuer_key, ca: bool, extra=()):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        for ext in extra:
            b = b.add_extension(ext, critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("unsamflow throw-away CA", ca_key, "unsamflow throw-away CA", ca_key, True, [
        x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                      data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                      encipher_only=False, decipher_only=False)])
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    node = build(f"unsamflow node {host}", key, "unsamflow throw-away CA", ca_key, False, [
        x509.SubjectAlternativeName([x509.DNSName(host), x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])])
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    pem = serialization.Encoding.PEM
    # The node certificate last: a set is reused only while its certificate is valid, so a run killed
    # half-way through a renewal leaves an invalid (or no) certificate, never a new CA beside an old one.
    _write(files["ca"], ca.public_bytes(pem))
    _write(files["key"], key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    _write(files["cert"], node.public_bytes(pem))
    return files


def _write(path: Path, data: bytes) -> None:
    """Replace `path` atomically by a file readable and writable by the user only from its first byte."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _valid(cert: Path) -> bool:
    """Does `cert` hold a certificate that is valid for at least another day?"""
    try:
        from cryptography import x509

        c = x509.load_pem_x509_certificate(cert.read_bytes())
    except Exception:
        return False
    left = c.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    return left > datetime.timedelta(days=1)
