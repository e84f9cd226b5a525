"""Why a TLS connection to a broker fails, in one line naming the setting to fix.

kafka-python does not raise TLS failures: it logs them and keeps retrying until its bootstrap
timeout, then reports ``KafkaTimeoutError('Unable to bootstrap ...')``. One handshake of our own,
with the same settings the client uses, tells a CA that did not sign the broker's certificate,
a certificate made for another host name, unreadable certificate files, and a listener that
does not speak TLS apart. Used by ``check`` and the worker before connecting, and by the
start-up error translation (``diagnose.bootstrap_timeout_error``).
"""

from __future__ import annotations

import socket
import ssl

from worker.errors import BrokerError, Failure
from worker.settings import WorkerSettings, env_name

# A handshake on a reachable listener takes milliseconds; this bounds a listener that hangs.
HANDSHAKE_TIMEOUT_S = 5.0
TLS_PROTOCOLS = ("SSL", "SASL_SSL")


def tls_context(settings: WorkerSettings) -> ssl.SSLContext:
    """The client context kafka-python builds from these settings (TLS 1.2+, host names checked)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.ssl_cafile is not None:
        ctx.load_verify_locations(str(settings.ssl_cafile))
    else:
        ctx.load_default_certs()
    if settings.ssl_certfile is not None:
        ctx.load_cert_chain(str(settings.ssl_certfile), str(settings.ssl_keyfile))
    return ctx


def tls_problem(settings: WorkerSettings, server: str) -> str | None:
    """One line saying why a TLS handshake with ``server`` (``host:port``) fails, or None.

    None also when the server cannot be reached at all: that is not a TLS question.
    """
    cafile = env_name("ssl_cafile")
    try:
        ctx = tls_context(settings)
    except (OSError, ssl.SSLError) as exc:
        return (
            f"the TLS files cannot be loaded ({exc}): {cafile} must be PEM CA certificates, "
            f"{env_name('ssl_certfile')}/{env_name('ssl_keyfile')} a PEM certificate and its key"
        )
    host, _, port = server.strip().rpartition(":")
    try:
        with (
            socket.create_connection((host, int(port)), timeout=HANDSHAKE_TIMEOUT_S) as raw,
            ctx.wrap_socket(raw, server_hostname=host),
        ):
            return None
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        if "mismatch" in reason.lower():  # "Hostname mismatch" / "IP address mismatch"
            return (
                f"the broker at {server} presented a certificate that is not valid for {host!r}"
                f" ({reason}): connect by a name the certificate holds"
                f" ({env_name('bootstrap_servers')})"
            )
        trusted = f"{cafile}={settings.ssl_cafile}" if settings.ssl_cafile else f"{cafile} is unset"
        return (
            f"the broker's certificate at {server} is not trusted ({reason}): {cafile} must be the"
            f" CA that signed it ({trusted})"
        )
    except ssl.SSLError as exc:
        return (
            f"the TLS handshake with {server} failed ({exc.reason or exc}): is it a TLS listener?"
            f" check {env_name('security_protocol')} and {cafile}"
        )
    except (OSError, ValueError):
        return None


def check_tls(settings: WorkerSettings) -> None:
    """Raise BrokerError (one line) when TLS to the first reachable bootstrap server fails."""
    if settings.security_protocol not in TLS_PROTOCOLS:
        return
    for server in settings.bootstrap_servers.split(","):
        problem = tls_problem(settings, server)
        if problem is not None:
            raise BrokerError(problem, Failure.AUTHENTICATION_FAILED)
