"""Throwaway TLS material for tests: CAs, certificates for loopback names, PKCS12 key- and truststores.

Certificates are made with ``openssl`` (an RSA CA valid one day, leaves signed by it with
``127.0.0.1`` and ``localhost`` as subject alternative names), stores for the JVM with ``openssl
pkcs12`` and ``keytool``; the keystore is read back with ``keytool -list``, so a store the JDK
cannot read fails here rather than as a broker that does not start. Everything lands in the
folder given; nothing is trusted system-wide.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LOOPBACK_SAN = "IP:127.0.0.1,DNS:localhost"


@dataclass(frozen=True)
class Pair:
    """A PEM certificate and its unencrypted PEM key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class BrokerTls:
    """What a broker's SSL listener and its clients need."""

    ca: Pair  # the CA the clients trust (``kafka.ssl_cafile`` = ``ca.cert``)
    broker: Pair  # the broker's certificate (CN and SANs 127.0.0.1 / localhost)
    keystore: Path  # PKCS12: the broker's key with its chain (certificate, CA)
    truststore: Path  # PKCS12: the CA alone, for the broker's trust in client certificates
    password: str  # of both stores and the key


def _run(folder: Path, *command: str) -> None:
    result = subprocess.run(command, check=False, cwd=folder, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed ({result.returncode}):\n{result.stderr[-2000:]}")


def make_ca(folder: Path, name: str) -> Pair:
    """A self-signed CA (``CN=name``) in ``folder/name.crt`` and ``.key``."""
    folder.mkdir(parents=True, exist_ok=True)
    pair = Pair(folder / f"{name}.crt", folder / f"{name}.key")
    _run(folder, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-sha256",
         "-subj", f"/CN={name}", "-keyout", str(pair.key), "-out", str(pair.cert),
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return pair


def issue(ca: Pair, folder: Path, name: str, usage: str = "serverAuth", san: str = LOOPBACK_SAN) -> Pair:
    """A leaf certificate ``CN=127.0.0.1`` signed by ``ca``, for ``usage`` (serverAuth or clientAuth)."""
    pair = Pair(folder / f"{name}.crt", folder / f"{name}.key")
    csr, extensions = folder / f"{name}.csr", folder / f"{name}.ext"
    _run(folder, "openssl", "req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", "/CN=127.0.0.1",
         "-keyout", str(pair.key), "-out", str(csr))
    extensions.write_text("\n".join([
        "basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}", f"subjectAltName={san}",
        "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid", "",
    ]))
    _run(folder, "openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
         "-set_serial", str(secrets.randbits(63)), "-days", "1", "-sha256", "-extfile", str(extensions),
         "-out", str(pair.cert))
    csr.unlink()
    extensions.unlink()
    return pair


def make_broker_tls(folder: Path, ca_name: str = "broker-ca") -> BrokerTls:
    """A CA, the broker's certificate, its PKCS12 keystore and a PKCS12 truststore holding the CA."""
    for tool in ("openssl", "keytool"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not on PATH (openssl; keytool comes with the JDK)")
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)
    ca = make_ca(folder, ca_name)
    broker = issue(ca, folder, "broker")
    keystore, truststore = folder / "broker.keystore.p12", folder / "broker.truststore.p12"
    _run(folder, "openssl", "pkcs12", "-export", "-name", "broker", "-in", str(broker.cert), "-inkey", str(broker.key),
         "-certfile", str(ca.cert), "-out", str(keystore), "-passout", f"pass:{password}")
    _run(folder, "keytool", "-list", "-storetype", "PKCS12", "-keystore", str(keystore), "-storepass", password)
    _run(folder, "keytool", "-importcert", "-noprompt", "-alias", ca_name, "-file", str(ca.cert),
         "-storetype", "PKCS12", "-keystore", str(truststore), "-storepass", password)
    return BrokerTls(ca=ca, broker=broker, keystore=keystore, truststore=truststore, password=password)
