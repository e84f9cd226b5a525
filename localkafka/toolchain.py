"""Finding the programs the local broker needs: Java 17+ (always), Maven (once, to fetch jars),
and keytool (for a TLS broker; it comes with every JDK and JRE)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localkafka.errors import (
    JavaNotFoundError,
    JavaTooOldError,
    KeytoolNotFoundError,
    MavenNotFoundError,
)

MIN_JAVA = 17  # Kafka 4.x brokers are built for and tested on Java 17 and 25
INSTALL_JAVA = "install a JDK 17 or newer (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
INSTALL_MAVEN = "install Maven (Debian/Ubuntu: apt-get install maven)"
# `java -version` answers in well under a second; this only guards against a wrapper that hangs.
VERSION_PROBE_TIMEOUT_S = 30.0

_VERSION_RE = re.compile(r'version "(?P<v>[^"]+)"')


@dataclass(frozen=True)
class Java:
    """A usable ``java`` executable and its major version (17, 21, 25, ...)."""

    path: Path
    major: int


def parse_java_major(version_output: str) -> int | None:
    """The major version in ``java -version`` output: ``"17.0.15"`` -> 17, ``"1.8.0_292"`` -> 8."""
    match = _VERSION_RE.search(version_output)
    if match is None:
        return None
    parts = re.split(r"[._+-]", match.group("v"))
    try:
        major = int(parts[0])
        return int(parts[1]) if major == 1 and len(parts) > 1 else major
    except ValueError:
        return None


def _java_candidate() -> tuple[str | None, str]:
    """The ``java`` to try and where it came from (for messages); JAVA_HOME wins, as in Kafka's scripts."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        path = Path(java_home) / "bin" / "java"
        if not os.access(path, os.X_OK):
            raise JavaNotFoundError(
                f"JAVA_HOME={java_home} has no bin/java: point JAVA_HOME at a JDK 17+ or unset it"
            )
        return str(path), "JAVA_HOME"
    return shutil.which("java"), "PATH"


def find_java() -> Java:
    """The ``java`` to run the broker with, checked to be version 17 or newer."""
    path, origin = _java_candidate()
    if path is None:
        raise JavaNotFoundError(
            f"Java not found (no JAVA_HOME, no java on PATH): {INSTALL_JAVA}, "
            "or run the tests against a Docker engine or KAFKA_BOOTSTRAP_SERVERS instead"
        )
    try:
        probe = subprocess.run(
            [path, "-version"],
            capture_output=True,
            text=True,
            timeout=VERSION_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaNotFoundError(f"could not run {path} -version ({exc}): {INSTALL_JAVA}") from exc
    major = parse_java_major(probe.stderr + probe.stdout)
    if major is None:
        raise JavaNotFoundError(
            f"{path} -version did not print a Java version (exit {probe.returncode}): {INSTALL_JAVA}"
        )
    if major < MIN_JAVA:
        raise JavaTooOldError(
            f"Java {major} found at {path} (from {origin}), but Kafka 4 needs Java {MIN_JAVA}+: "
            f"{INSTALL_JAVA} and put it first on PATH or set JAVA_HOME"
        )
    return Java(path=Path(path), major=major)


def find_maven(jars_dir: Path) -> Path:
    """The ``mvn`` executable; it is only needed while ``jars_dir`` has not been filled yet."""
    path = shutil.which("mvn")
    if path is None:
        raise MavenNotFoundError(
            f"Maven (mvn) not found on PATH: it is needed once to fetch the Kafka jars into "
            f"{jars_dir}: {INSTALL_MAVEN}"
        )
    return Path(path)


def find_keytool(java: Java) -> Path:
    """The ``keytool`` of the same Java installation as ``java`` (else the one on ``PATH``)."""
    beside = Path(os.path.realpath(java.path)).parent / "keytool"
    if os.access(beside, os.X_OK):
        return beside
    path = shutil.which("keytool")
    if path is None:
        raise KeytoolNotFoundError(
            f"keytool not found beside {java.path} nor on PATH: it makes the TLS broker's "
            f"certificates and comes with every JDK/JRE: {INSTALL_JAVA}"
        )
    return Path(path)
