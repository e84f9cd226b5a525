"""Throwaway TLS material for the local broker, made on the spot with the JDK's ``keytool``.

    <folder>/ca.pem       the throwaway CA's certificate (PEM): what clients trust (ssl_cafile)
    <folder>/broker.p12   the broker's private key and certificate chain (PKCS12), for the broker

The broker certificate names ``127.0.0.1`` and ``localhost`` (subject alternative names), so a
client verifies the host name as well as the chain. The CA's private key is deleted once it has
signed the broker certificate: the CA file can never vouch for anything else.

keytool comes with every Java installation that can run the broker, so a TLS broker needs
nothing more than a plain one. It is a JVM per call; independent steps run side by side
(four rounds, about 2 s in all on 2 shared cores).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localkafka.errors import TlsError

CA_DNAME = "CN=tagstream throwaway test CA"
BROKER_DNAME = "CN=localhost"
BROKER_NAMES = "dns:localhost,ip:127.0.0.1"  # what clients connect to: 127.0.0.1 (advertised)
# A `kafka up --tls` broker may run for days; every fresh start makes new certificates.
VALIDITY_DAYS = 30
KEY_ARGS = ("-keyalg", "EC", "-groupname", "secp256r1")  # P-256: made in milliseconds
KEYTOOL_JVM_ARGS = ("-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC", "-J-XX:-UsePerfData")
# Each keytool call takes about half a second; the limit only bounds a JVM that hangs.
KEYTOOL_TIMEOUT_S = 60.0
# Passwords reach keytool through its environment (-storepass:env), never its command line.
_CA_PASS_ENV = "TAGSTREAM_KEYTOOL_CA_PASS"
_STORE_PASS_ENV = "TAGSTREAM_KEYTOOL_STORE_PASS"


@dataclass(frozen=True)
class TlsMaterial:
    """What a TLS broker was given: the CA file for clients, the keystore for the broker."""

    ca_file: Path  # PEM certificate of the CA that signed the broker certificate
    keystore: Path  # PKCS12: the broker's key and its chain (broker, CA)
    keystore_password: str = field(repr=False)  # random; only server.properties holds it


def make_ca(folder: Path, keytool: Path, dname: str = CA_DNAME) -> Path:
    """A throwaway CA certificate alone (its key is discarded): ``folder/ca.pem``.

    Useful as a *wrong* CA: a valid CA file that did not sign the broker's certificate.
    """
    folder.mkdir(parents=True, exist_ok=True)
    env = _env(ca=secrets.token_hex(16))
    _run_round(keytool, folder, env, [_genkeypair("ca", "ca.p12", dname, _CA_PASS_ENV, ca=True)])
    _run_round(keytool, folder, env, [_exportcert()])
    (folder / "ca.p12").unlink()
    return folder / "ca.pem"


def make_broker_tls(folder: Path, keytool: Path) -> TlsMaterial:
    """A new CA and a broker certificate it signed, in ``folder`` (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    store_password = secrets.token_hex(16)
    env = _env(ca=secrets.token_hex(16), store=store_password)
    store = ("-keystore", "broker.p12", "-storetype", "PKCS12", "-storepass:env", _STORE_PASS_ENV)
    _run_round(  # two keys at once
        keytool, folder, env,
        [
            _genkeypair("ca", "ca.p12", CA_DNAME, _CA_PASS_ENV, ca=True),
            _genkeypair("broker", "broker.p12", BROKER_DNAME, _STORE_PASS_ENV, ca=False),
        ],
    )
    _run_round(  # the CA certificate out, the broker's signing request out
        keytool, folder, env,
        [_exportcert(), ["-certreq", "-alias", "broker", *store, "-file", "broker.csr"]],
    )
    _run_round(  # the CA signs: a server certificate for 127.0.0.1 and localhost
        keytool, folder, env,
        [[
            "-gencert", "-alias", "ca", "-keystore", "ca.p12", "-storetype", "PKCS12",
            "-storepass:env", _CA_PASS_ENV, "-infile", "broker.csr", "-outfile", "broker.pem",
            "-rfc", "-validity", str(VALIDITY_DAYS), "-ext", f"SAN={BROKER_NAMES}",
            "-ext", "KU=digitalSignature,keyEncipherment", "-ext", "EKU=serverAuth",
        ]],
    )
    chain = folder / "chain.pem"
    chain.write_text((folder / "broker.pem").read_text() + (folder / "ca.pem").read_text())
    _run_round(  # the signed chain replaces the self-signed broker certificate
        keytool, folder, env,
        [["-importcert", "-noprompt", "-alias", "broker", *store, "-file", "chain.pem"]],
    )
    for leftover in ("ca.p12", "broker.csr", "broker.pem", "chain.pem"):
        (folder / leftover).unlink()
    return TlsMaterial(folder / "ca.pem", folder / "broker.p12", store_password)


def _env(*, ca: str, store: str | None = None) -> dict[str, str]:
    env = {**os.environ, _CA_PASS_ENV: ca}
    if store is not None:
        env[_STORE_PASS_ENV] = store
    return env


def _genkeypair(alias: str, store: str, dname: str, password_env: str, *, ca: bool) -> list[str]:
    return [
        "-genkeypair", "-alias", alias, *KEY_ARGS, "-dname", dname,
        "-validity", str(VALIDITY_DAYS), "-keystore", store, "-storetype", "PKCS12",
        "-storepass:env", password_env,
        *(("-ext", "bc:c") if ca else ()),  # basicConstraints CA:true: it may sign certificates
    ]


def _exportcert() -> list[str]:
    return [
        "-exportcert", "-rfc", "-alias", "ca", "-keystore", "ca.p12", "-storetype", "PKCS12",
        "-storepass:env", _CA_PASS_ENV, "-file", "ca.pem",
    ]


def _run_round(
    keytool: Path, folder: Path, env: dict[str, str], commands: Sequence[list[str]]
) -> None:
    """Run independent keytool commands side by side; raise TlsError naming any that failed."""
    procs = [
        subprocess.Popen(
            [str(keytool), *cmd, *KEYTOOL_JVM_ARGS],
            cwd=folder, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for cmd in commands
    ]
    deadline = time.monotonic() + KEYTOOL_TIMEOUT_S
    failures = []
    for cmd, proc in zip(commands, procs, strict=True):
        try:
            output, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            failures.append(f"keytool {cmd[0]} took over {KEYTOOL_TIMEOUT_S:.0f} s")
            continue
        if proc.returncode != 0:
            last = (output.strip().splitlines() or ["(no output)"])[-1]
            failures.append(f"keytool {cmd[0]} exited with code {proc.returncode}: {last}")
    if failures:
        raise TlsError(
            f"could not make the throwaway TLS certificates in {folder} with {keytool}: "
            + "; ".join(failures)
        )
