"""A self-signed CA and the local brokers' certificate, made with the JDK's ``keytool``.

keytool comes with the Java the broker needs anyway, so TLS adds no dependency. The CA
signs one broker certificate for ``localhost`` and ``127.0.0.1`` (every local node
listens there, so one certificate serves them all). The broker reads its key and chain
from a PKCS12 keystore; clients (librdkafka, Python's ssl for faust) verify the brokers
with the CA in PEM. Files are made once, in a scratch folder renamed into place, so a
half-made set is never used; keys and keystores are readable by the owner only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from streams.errors import InfraError

__all__ = ["TlsFiles", "make_certificates"]

_DAYS = "3650"  # a local development CA: long-lived, never trusted outside this folder


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a state folder's TLS material lives."""

    directory: Path

    @property
    def ca_pem(self) -> Path:
        """The CA certificate, PEM: what clients verify the brokers with."""
        return self.directory / "ca.pem"

    @property
    def keystore(self) -> Path:
        """The brokers' key and certificate chain, PKCS12."""
        return self.directory / "broker.p12"

    def complete(self) -> bool:
        return self.ca_pem.is_file() and self.keystore.is_file()


def _keytool(*args: str) -> None:
    keytool = shutil.which("keytool")
    if keytool is None:
        raise InfraError("keytool is not on PATH: it comes with the JDK and makes the local CA")
    result = subprocess.run(
        [keytool, *args], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        # keytool never prints the store password; the arguments (which hold it) are not shown.
        raise InfraError(
            f"keytool {args[0]} failed (exit {result.returncode}): "
            f"{(result.stdout + result.stderr).strip()[-800:]}"
        )


def make_certificates(directory: Path, store_password: str) -> TlsFiles:
    """The CA and broker keystore in ``directory``, made now unless they exist."""
    files = TlsFiles(directory)
    if files.complete():
        return files
    scratch = directory.with_name(directory.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True, mode=0o700)
    ca_store, broker_store = scratch / "ca.p12", scratch / "broker.p12"
    ca_pem, csr, signed = scratch / "ca.pem", scratch / "broker.csr", scratch / "broker.pem"
    password = ("-storepass", store_password, "-keypass", store_password)
    key = ("-keyalg", "EC", "-groupname", "secp256r1", "-validity", _DAYS, "-storetype", "PKCS12")
    _keytool(
        "-genkeypair", "-alias", "ca", "-dname", "CN=streamscore local CA",
        "-ext", "bc:c", "-keystore", str(ca_store), *key, *password,
    )  # fmt: skip
    _keytool(
        "-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca_store),
        "-file", str(ca_pem), "-storepass", store_password,
    )  # fmt: skip
    _keytool(
        "-genkeypair", "-alias", "broker", "-dname", "CN=localhost",
        "-keystore", str(broker_store), *key, *password,
    )  # fmt: skip
    _keytool(
        "-certreq", "-alias", "broker", "-keystore", str(broker_store),
        "-file", str(csr), "-storepass", store_password,
    )  # fmt: skip
    _keytool(
        "-gencert", "-rfc", "-alias", "ca", "-keystore", str(ca_store),
        "-infile", str(csr), "-outfile", str(signed), "-validity", _DAYS,
        "-ext", "SAN=dns:localhost,ip:127.0.0.1", "-ext", "EKU=serverAuth,clientAuth",
        "-storepass", store_password,
    )  # fmt: skip
    # The chain: the CA first (trusted), then the signed certificate replaces the
    # self-signed one under the broker's key.
    _keytool(
        "-importcert", "-noprompt", "-alias", "ca", "-file", str(ca_pem),
        "-keystore", str(broker_store), "-storepass", store_password,
    )  # fmt: skip
    _keytool(
        "-importcert", "-noprompt", "-alias", "broker", "-file", str(signed),
        "-keystore", str(broker_store), "-storepass", store_password,
    )  # fmt: skip
    for path in scratch.iterdir():
        os.chmod(path, 0o644 if path.suffix == ".pem" else 0o600)
    shutil.rmtree(directory, ignore_errors=True)
    scratch.rename(directory)
    return files
