"""The Kafka broker's jars: fetched once from Maven Central by Maven, cached outside the repository.

Layout (the root is ``$TAGSTREAM_KAFKA_CACHE``, else ``$XDG_CACHE_HOME/tagstream/kafka``, else
``~/.cache/tagstream/kafka``)::

    <root>/<kafka version>/pom.xml     the packaged pom.xml, copied for Maven to run on
    <root>/<kafka version>/lib/*.jar   the broker's classpath (complete, or absent)
    <root>/<kafka version>/fetch.log   Maven's output of the last fetch

``lib/`` only ever appears whole: Maven fills ``lib.partial-<pid>/`` and that is renamed when
Maven succeeded, under a file lock so that concurrent test sessions fetch once.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from localkafka.errors import FetchError
from localkafka.toolchain import find_maven

CACHE_ENV = "TAGSTREAM_KAFKA_CACHE"
# A first fetch downloads about 45 MB plus Maven's plugins: well under a minute on a normal link.
# The limit only turns a stalled connection (Maven's own read timeout is 30 min) into an error.
FETCH_TIMEOUT_S = 600.0
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def package_file(name: str) -> Path:
    """A data file shipped inside this package (``pom.xml``, ``log4j2.properties``)."""
    return Path(str(resources.files("localkafka").joinpath(name)))


@cache
def pinned_versions() -> dict[str, str]:
    """The ``<properties>`` of the packaged pom.xml: ``kafka.version``, ``log4j.version``, ..."""
    root = ET.parse(package_file("pom.xml")).getroot()
    props = root.find("m:properties", _POM_NS)
    assert props is not None, "pom.xml has no <properties>"
    return {child.tag.split("}")[-1]: (child.text or "").strip() for child in props}


def kafka_version() -> str:
    """The pinned Apache Kafka version, e.g. ``"4.3.1"``."""
    return pinned_versions()["kafka.version"]


def cache_root() -> Path:
    """Where fetched jars live, outside any repository (see the module docstring)."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tagstream" / "kafka"


@dataclass(frozen=True)
class KafkaJars:
    """A complete set of broker jars for one Kafka version."""

    version: str
    lib_dir: Path

    @property
    def classpath(self) -> str:
        # The JVM expands "dir/*" itself; it keeps command lines (and `ps`) short.
        return str(self.lib_dir / "*")

    @property
    def count(self) -> int:
        return sum(1 for _ in self.lib_dir.glob("*.jar"))


def _version_dir(root: Path | None, version: str) -> Path:
    return (root or cache_root()) / version


def _complete(lib_dir: Path, version: str) -> bool:
    return (lib_dir / f"kafka_2.13-{version}.jar").is_file()


def cached_jars(root: Path | None = None) -> KafkaJars | None:
    """The cached jars of the pinned version, or None when they have not been fetched yet."""
    version = kafka_version()
    lib_dir = _version_dir(root, version) / "lib"
    return KafkaJars(version, lib_dir) if _complete(lib_dir, version) else None


def ensure_jars(
    root: Path | None = None,
    *,
    maven_args: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
) -> KafkaJars:
    """The cached jars, fetching them with Maven first if they are not there yet."""
    return cached_jars(root) or fetch_jars(root, maven_args=maven_args, progress=progress)


@contextmanager
def _fetch_lock(version_dir: Path) -> Iterator[None]:
    version_dir.mkdir(parents=True, exist_ok=True)
    with (version_dir / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session fetching: wait for it, then reuse
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fetch_jars(
    root: Path | None = None,
    *,
    maven_args: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
    refresh: bool = False,
) -> KafkaJars:
    """Fetch the pinned Kafka version's jars into the cache with Maven and return them.

    ``maven_args`` are extra Maven arguments (``-o``, ``-s settings.xml``, ...). ``progress`` is
    called with 0 when Maven starts, then with the number of files it has downloaded so far. With ``refresh`` the jars are
    fetched again even when cached. Raises MavenNotFoundError or FetchError.
    """
    version = kafka_version()
    version_dir = _version_dir(root, version)
    lib_dir = version_dir / "lib"
    with _fetch_lock(version_dir):
        if not refresh and _complete(lib_dir, version):
            return KafkaJars(version, lib_dir)  # fetched by someone else while we waited
        mvn = find_maven(lib_dir)
        pom = version_dir / "pom.xml"
        shutil.copyfile(package_file("pom.xml"), pom)
        partial = version_dir / f"lib.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        log_path = version_dir / "fetch.log"
        cmd = [
            str(mvn),
            "-B",
            "-f",
            str(pom),
            *maven_args,
            # Fully qualified: the "dependency:" prefix needs plugin metadata that an offline
            # or empty local repository lacks, which would hide the real error.
            f"org.apache.maven.plugins:maven-dependency-plugin:{pinned_versions()['dependency.plugin.version']}"
            ":copy-dependencies",
            f"-Dkafka.lib.dir={partial}",
        ]
        if progress is not None:
            progress(0)
        returncode = _run_maven(cmd, log_path, progress)
        if returncode != 0 or not _complete(partial, version):
            shutil.rmtree(partial, ignore_errors=True)
            reason = maven_failure_reason(log_path.read_text(errors="replace"))
            fix = (
                "Maven runs offline (-o, or <offline> in ~/.m2/settings.xml): let it go online once"
                if "offline mode" in reason
                else "check that Maven Central is reachable (proxy/mirror in ~/.m2/settings.xml)"
            )
            raise FetchError(
                f"could not fetch the Kafka {version} jars with Maven ({reason}): {fix}; "
                f"full log: {log_path}"
            )
        shutil.rmtree(lib_dir, ignore_errors=True)
        partial.rename(lib_dir)
    return KafkaJars(version, lib_dir)


def _run_maven(cmd: list[str], log_path: Path, progress: Callable[[int], None] | None) -> int:
    """Run Maven with its output in ``log_path``, reporting downloads; returns the exit code."""
    downloads = 0
    with log_path.open("w") as log:
        try:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise FetchError(f"could not run Maven ({cmd[0]}): {exc}") from exc
        assert proc.stdout is not None
        # A stalled download prints nothing, so the deadline is a timer, not a check per line.
        timed_out = threading.Event()

        def stop_stalled_maven() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(FETCH_TIMEOUT_S, stop_stalled_maven)
        timer.start()
        try:
            for line in proc.stdout:
                log.write(line)
                if line.startswith("Downloaded from"):
                    downloads += 1
                    if progress is not None:
                        progress(downloads)
            returncode = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if timed_out.is_set():
        raise FetchError(
            f"Maven did not finish fetching within {FETCH_TIMEOUT_S:.0f} s: check the network "
            f"or Maven's proxy settings; log: {log_path}"
        )
    return returncode


_ERROR_PREFIX = re.compile(r"^\[ERROR\]\s*")
_GOAL_PREFIX = re.compile(r"^Failed to execute goal \S+ \([^)]*\) on project \S+: ")


def maven_failure_reason(output: str) -> str:
    """The first ``[ERROR]`` line of Maven's output, without its boilerplate (one line)."""
    for line in output.splitlines():
        if not line.startswith("[ERROR]"):
            continue
        text = _GOAL_PREFIX.sub("", _ERROR_PREFIX.sub("", line)).replace(" -> [Help 1]", "")
        text = text.strip()
        if text:
            return text[:400]
    tail = [line.strip() for line in output.splitlines() if line.strip()]
    return tail[-1][:400] if tail else "no output"
