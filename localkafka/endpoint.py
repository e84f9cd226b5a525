"""One listener of a broker and what a client needs to reach it (address, protocol, secrets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localkafka.config import SCRAM_MECHANISMS

SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL")


@dataclass(frozen=True)
class Endpoint:
    """Where and how a client reaches one listener.

    ``username``/``password`` are set for SASL_* listeners, ``cafile`` (the PEM file of the CA
    that signed the broker's certificate) for SSL and SASL_SSL ones. The password is left out
    of ``repr`` so that test failure output does not show it.
    """

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: Path | None = None
    mechanisms: tuple[str, ...] = SCRAM_MECHANISMS
    log_path: Path | None = None  # the broker's log, when it is a local broker

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def client_config(
        self,
        mechanism: str = "SCRAM-SHA-512",
        *,
        password: str | None = None,
        cafile: Path | str | None = None,
    ) -> dict[str, Any]:
        """kafka-python client settings for this listener.

        ``mechanism`` is used on SASL listeners only; ``password`` and ``cafile`` override this
        endpoint's (to try wrong ones).
        """
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.uses_sasl:
            if mechanism not in self.mechanisms:
                raise ValueError(f"mechanism {mechanism!r} is not one of {self.mechanisms}")
            config.update(
                sasl_mechanism=mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=self.password if password is None else password,
            )
        if self.uses_tls:
            config["ssl_cafile"] = str(cafile or self.cafile)
        return config


# The name of this class before it served TLS listeners too; kept for existing imports.
ScramEndpoint = Endpoint
