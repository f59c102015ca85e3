"""A real Apache Kafka broker (KRaft, one combined broker+controller) on loopback, or a
cluster of them (``LocalCluster``, three nodes for the durability tests).

The jars come from Maven Central through the pinned manifest ``infra/kafka/pom.xml``
(fetched once into ``var/kafka-libs`` by :mod:`streams.infra.fetch`); Java runs
``kafka.Kafka`` from them directly, no shell scripts, no Docker. Used by the test
fixtures, the demo and the benchmarks; developers run one with ``bin/kafka-local``.

::

    with LocalKafka() as kafka:                      # ~2 s on 2 cores, see startup_seconds
        Producer({"bootstrap.servers": kafka.bootstrap_servers})

``LocalKafka(authenticated=True, users={"training": "pw"})`` turns on SASL/PLAIN on
every listener and the KRaft ``StandardAuthorizer`` with nothing allowed unless an ACL
grants it; ``User:admin`` (:attr:`LocalKafka.super_user`) is the only super user.
That is the broker of the R18 least-privilege tests.

``STREAMS_KAFKA_LIBS=<dir of jars>`` runs another Kafka release instead of the pinned one
(``infra/kafka/compat-check`` uses it to test the clients against other releases).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Self

from streams.infra.fetch import ROOT, libs_dir
from streams.infra.started import Started

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret"  # a local test broker's credential, never a real one
LIBS_ENV = "STREAMS_KAFKA_LIBS"
CDS_ENV = "STREAMS_KAFKA_CDS"  # "0": no class data sharing archives
STATE_DIR = ROOT / "var" / "kafka"  # the CLI's daemon state; ephemeral brokers live in tmp/
CDS_DIR = STATE_DIR / "cds"
TMP_DIR = STATE_DIR / "tmp"  # data dirs of brokers started without one

_HOST = "127.0.0.1"
_USER_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

# Everything the broker logs goes to server.log in its data dir, WARN and up (a start
# writes two lines). log4j2 is the manifest's slf4j backend; the log4j 1.x file serves a
# release run with reload4j instead (STREAMS_KAFKA_LIBS).
_LOG4J2 = """\
<Configuration status="warn" shutdownHook="disable">
  <Appenders>
    <File name="file" fileName="{log_file}">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="state.change.logger" level="off"/>
    <Root level="warn"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""
_LOG4J = """\
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log_file}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.state.change.logger=OFF
"""


class SaslUser(NamedTuple):
    """A SASL/PLAIN user of an authenticated broker."""

    username: str
    password: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


class LocalKafka(Started):
    """A single-node KRaft broker on 127.0.0.1, started from the project's pinned jars.

    ``start()`` formats the storage (first start only), launches the JVM and returns once
    an AdminClient sees the broker; ``startup_seconds`` holds how long that took.
    ``stop()`` sends SIGTERM (SIGKILL after ``stop_timeout_s``) and deletes the data dir
    if it made one, unless ``keep_data``. ``restart()`` comes back on the same ports with
    the same data; ``kill()`` is a crash.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        authenticated: bool = False,
        users: Mapping[str, str] | None = None,
        heap: str = "512m",
        num_partitions: int = 1,
        libs: Path | str | None = None,
        extra_properties: Mapping[str, str] | None = None,
        keep_data: bool = False,
        stop_timeout_s: float = 20.0,
        die_with_parent: bool = True,
        class_data_sharing: bool | None = None,
        node_id: int = 1,
        cluster_id: str | None = None,
        replication: int = 1,
    ) -> None:
        self._own_dir = data_dir is None
        self._lock: IO[bytes] | None = None
        if data_dir is None:
            _sweep_stale_data_dirs()
            TMP_DIR.mkdir(parents=True, exist_ok=True)
            data_dir = tempfile.mkdtemp(prefix="broker-", dir=TMP_DIR)
            self._lock = _lock_dir(Path(data_dir))
        self.data_dir = Path(data_dir).resolve()
        self.authenticated = authenticated
        for name in users or {}:
            if not _USER_NAME.match(name) or name == ADMIN_USER:
                raise ValueError(f"bad or reserved user name {name!r}")
        self.users: dict[str, str] = {ADMIN_USER: ADMIN_PASSWORD, **(users or {})}
        self.heap = heap
        self.num_partitions = num_partitions
        self._libs = Path(libs).resolve() if libs is not None else None
        self.extra_properties = dict(extra_properties or {})
        self.keep_data = keep_data
        self.stop_timeout_s = stop_timeout_s
        self.die_with_parent = die_with_parent
        if class_data_sharing is None:
            class_data_sharing = os.environ.get(CDS_ENV, "1") != "0"
        self.class_data_sharing = class_data_sharing
        self._broker_archive: _Archive | None = None
        self.port, self.controller_port = _free_ports(2)
        # One node of a ``LocalCluster``: its id, the cluster's id (every node is formatted
        # with the same) and the controller quorum; alone, a quorum of itself.
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.replication = replication
        self.quorum_voters: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None
        self.startup_seconds: float | None = None
        """Seconds from ``start()`` to a broker that answers metadata (last start)."""
        self.format_seconds: float | None = None
        """Of which formatting the storage took (0 when it was already formatted)."""

    # --- addresses and credentials -----------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        return f"{_HOST}:{self.port}"

    @property
    def super_user(self) -> SaslUser:
        """The super user (``User:admin``) of an authenticated broker."""
        return SaslUser(ADMIN_USER, self.users[ADMIN_USER])

    def client_config(self, user: str = ADMIN_USER) -> dict[str, Any]:
        """librdkafka (confluent-kafka) settings to connect as ``user``.

        Just ``bootstrap.servers`` when the broker is not authenticated.
        """
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        if self.authenticated:
            config |= {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                "sasl.username": user,
                "sasl.password": self.users[user],
            }
        return config

    def aiokafka_config(self, user: str = ADMIN_USER) -> dict[str, Any]:
        """Keyword arguments for aiokafka (faust's client) to connect as ``user``."""
        config: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers}
        if self.authenticated:
            config |= {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": user,
                "sasl_plain_password": self.users[user],
            }
        return config

    @property
    def libs(self) -> Path:
        """The folder of jars the broker runs from (fetched on first use)."""
        if self._libs is None:
            override = os.environ.get(LIBS_ENV)
            self._libs = Path(override).resolve() if override else libs_dir("kafka")
        return self._libs

    @property
    def kafka_version(self) -> str:
        """The Apache Kafka release in :attr:`libs`, read from the jar's name."""
        for jar in self.libs.glob("kafka_2.13-*.jar"):
            return jar.name.removeprefix("kafka_2.13-").removesuffix(".jar")
        raise FileNotFoundError(f"no kafka_2.13 jar in {self.libs}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    # --- lifecycle ------------------------------------------------------------------------
    def start(self, timeout_s: float = 90.0, *, wait: bool = True) -> Self:
        """Format (first time), launch and wait until ready. Returns ``self``.

        ``wait=False`` returns once the JVM is launched (then ``wait_ready``): the nodes of
        a ``LocalCluster`` all run before any is ready, since its controllers need a
        majority to elect a leader."""
        if self.running:
            return self
        libs = self.libs  # a first fetch is not part of the start-up time
        started = time.monotonic()
        fresh = not (self.data_dir / "logs" / "meta.properties").exists()
        attempts = 3 if fresh else 1  # a port taken since we picked it: pick new ones
        try:
            for attempt in range(attempts):
                properties = self._write_config()
                format_started = time.monotonic()
                if fresh:
                    self._format(properties, libs)
                self.format_seconds = time.monotonic() - format_started
                self._launch(properties, libs)
                if not wait:
                    _LIVE.add(self)
                    return self
                try:
                    self._wait_ready(started + timeout_s)
                    break
                except _PortInUse:
                    self._terminate(signal.SIGKILL)
                    if attempt == attempts - 1:
                        raise
                    shutil.rmtree(self.data_dir / "logs", ignore_errors=True)
                    self.port, self.controller_port = _free_ports(2)
        except BaseException:
            self._terminate(signal.SIGKILL)
            if fresh and self._own_dir and not self.keep_data:  # the error has the log's tail
                self._remove_data_dir()
            raise
        self.startup_seconds = time.monotonic() - started
        _LIVE.add(self)
        log.info(
            "Kafka %s ready at %s in %.2fs (format %.2fs)%s; logs in %s",
            self.kafka_version,
            self.bootstrap_servers,
            self.startup_seconds,
            self.format_seconds,
            " with SASL/PLAIN and ACLs" if self.authenticated else "",
            self.log_file,
        )
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> LocalKafka:
        """After ``start(wait=False)``: wait until the broker answers (``startup_seconds``
        counts from here)."""
        started = time.monotonic()
        try:
            self._wait_ready(started + timeout_s)
        except BaseException:
            self._terminate(signal.SIGKILL)
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self, keep_data: bool | None = None) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout_s``; remove the data dir we made
        unless ``keep_data`` (then it is marked ``KEPT`` and never swept)."""
        self._terminate(signal.SIGTERM)
        _LIVE.discard(self)
        keep = self.keep_data if keep_data is None else keep_data
        if not self._own_dir:
            return
        if keep:
            (self.data_dir / _KEPT).touch()
            log.info("Kafka data kept in %s", self.data_dir)
        else:
            self._remove_data_dir()

    def restart(self, timeout_s: float = 90.0) -> LocalKafka:
        """Stop cleanly and start again on the same ports with the same data (chaos)."""
        self._terminate(signal.SIGTERM)
        return self.start(timeout_s)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would; the data stays (``start()`` recovers it)."""
        self._terminate(signal.SIGKILL)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalKafka({self.bootstrap_servers}, {state}, data_dir={self.data_dir})"

    # --- internals ------------------------------------------------------------------------
    def properties(self) -> dict[str, str]:
        """The broker's ``server.properties``."""
        protocol = "SASL_PLAINTEXT" if self.authenticated else "PLAINTEXT"
        voters = self.quorum_voters or f"{self.node_id}@{_HOST}:{self.controller_port}"
        # Internal topics (consumer offsets, transaction state) as durable as the cluster
        # allows: on three nodes 3 copies, and a transaction or offset commit needs 2 of them.
        replication, min_isr = str(self.replication), str(2 if self.replication >= 3 else 1)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"CLIENT://{_HOST}:{self.port},CONTROLLER://{_HOST}:{self.controller_port}",
            "advertised.listeners": f"CLIENT://{_HOST}:{self.port}",
            "listener.security.protocol.map": f"CLIENT:{protocol},CONTROLLER:{protocol}",
            "inter.broker.listener.name": "CLIENT",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": str(self.num_partitions),
            "default.replication.factor": replication,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replication,
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "6",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            # small and quick on a 2-core laptop or CI runner
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "2",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "log.cleaner.backoff.ms": "1000",
            "log.segment.delete.delay.ms": "1000",
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "5000",
            "transaction.remove.expired.transaction.cleanup.interval.ms": "60000",
        }
        if self.authenticated:
            # R18: authenticated principals, nothing allowed unless an ACL grants it. Both
            # listeners use SASL/PLAIN, so the broker talks to its controller as User:admin
            # and no anonymous principal needs any right.
            users = " ".join(f'user_{u}="{p}"' for u, p in self.users.items())
            jaas = (
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{ADMIN_USER}" password="{self.users[ADMIN_USER]}" {users};'
            )
            props |= {
                "sasl.enabled.mechanisms": "PLAIN",
                "sasl.mechanism.inter.broker.protocol": "PLAIN",
                "sasl.mechanism.controller.protocol": "PLAIN",
                "listener.name.client.plain.sasl.jaas.config": jaas,
                "listener.name.controller.plain.sasl.jaas.config": jaas,
                "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                "super.users": f"User:{ADMIN_USER}",
                "allow.everyone.if.no.acl.found": "false",
            }
        return props | self.extra_properties

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "server.properties"
        # Java properties escaping: only backslashes matter for our values.
        text = "".join(
            f"{k}={v.replace(chr(92), chr(92) * 2)}\n" for k, v in self.properties().items()
        )
        path.write_text(text)
        path.chmod(0o600)  # holds the JAAS passwords when authenticated
        (self.data_dir / "log4j.properties").write_text(_LOG4J.format(log_file=self.log_file))
        (self.data_dir / "log4j2.xml").write_text(_LOG4J2.format(log_file=self.log_file))
        return path

    def _java(self, main: str, libs: Path, *args: str, archive: _Archive) -> list[str]:
        tool = archive.role == "format"
        flags = [
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}" if not tool else "-Xms64m",
            *_JVM_FLAGS,
            *archive.flags(),
            f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={self.data_dir}",
        ]
        if tool:
            flags.append("-XX:TieredStopAtLevel=1")  # short-lived: C1 only
        return [_java_binary(), *flags, "-cp", f"{libs}/*", main, *args]

    def _archive(self, libs: Path, role: str) -> _Archive:
        return _Archive(libs, role, enabled=self.class_data_sharing, dump=self.die_with_parent)

    def _format(self, properties: Path, libs: Path) -> None:
        archive = self._archive(libs, "format")
        command = self._java(
            "kafka.tools.StorageTool",
            libs,
            "format",
            "--cluster-id",
            self.cluster_id or _cluster_id(),
            "--config",
            str(properties),
            "--ignore-formatted",
            archive=archive,
        )
        result = subprocess.run(command, capture_output=True, timeout=120)
        archive.finish(result.returncode)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
            raise RuntimeError(f"formatting Kafka storage in {self.data_dir} failed:\n{output}")

    def _launch(self, properties: Path, libs: Path) -> None:
        self._console = open(self.data_dir / "console.log", "ab")  # noqa: SIM115
        parent_bound = self.die_with_parent and _main_thread() and _PRCTL is not None
        preexec = _die_with_parent if parent_bound else None
        self._broker_archive = self._archive(libs, "broker")
        self.process = subprocess.Popen(
            self._java("kafka.Kafka", libs, str(properties), archive=self._broker_archive),
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            start_new_session=True,  # Ctrl-C in a terminal reaches Python, which stops it
            preexec_fn=preexec,
        )
        (self.data_dir / "broker.pid").write_text(f"{self.process.pid}\n")

    def _terminate(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("Kafka at %s ignored %s; killing it", self.bootstrap_servers, sig.name)
                process.kill()
                process.wait(10)
        if process is not None and self._broker_archive is not None:
            self._broker_archive.finish(process.returncode)
            self._broker_archive = None
        if self._console is not None:
            self._console.close()
            self._console = None

    def _wait_ready(self, deadline: float) -> None:
        from confluent_kafka.admin import AdminClient

        config: dict[str, Any] = {
            **self.client_config(),
            "socket.timeout.ms": 2000,
            "logger": _QUIET_LIBRDKAFKA,
        }
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                tail = self._log_tail()
                if "Address already in use" in tail:
                    raise _PortInUse(tail)
                raise RuntimeError(f"Kafka exited while starting; {self.log_file}:\n{tail}")
            try:
                with socket.create_connection((_HOST, self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            try:
                if self._serving(AdminClient(config)):
                    return
            except Exception:  # not serving yet (KafkaException and the like)
                pass
            time.sleep(0.05)
        tail = self._log_tail()
        raise TimeoutError(f"Kafka not ready in time; {self.log_file}:\n{tail}")

    @staticmethod
    def _serving(admin: AdminClient) -> bool:
        """Registered and, after a restart, serving every partition it leads again: until
        then clients get NOT_LEADER errors although the broker already answers metadata."""
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec

        metadata = admin.list_topics(timeout=2)
        if not metadata.brokers:
            return False
        partitions = {
            TopicPartition(name, index): OffsetSpec.latest()
            for name, topic in metadata.topics.items()
            for index in topic.partitions
        }
        if partitions:
            for future in admin.list_offsets(partitions, request_timeout=2).values():
                future.result()
        return True

    def _remove_data_dir(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _log_tail(self, chars: int = 4000) -> str:
        parts = []
        for path in (self.log_file, self.data_dir / "console.log"):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace")[-chars:])
        return "\n".join(parts)


class LocalCluster(Started):
    """``brokers`` KRaft nodes on 127.0.0.1, each a combined broker and controller, one
    controller quorum (``controller.quorum.voters`` lists every node). On three nodes the
    internal topics have 3 copies and need 2 in sync (``min.insync.replicas`` 2 is also the
    brokers' default), so one node may die without a committed offset or transaction lost.

    ::

        with LocalCluster(brokers=3) as cluster:      # bootstrap_servers lists every node
            cluster.nodes[0].kill()                   # SIGKILL one node (a crash)
            cluster.nodes[0].start()                  # back with its data, same ports

    ``options`` are ``LocalKafka``'s (``authenticated``, ``users``, ``heap``, ...).
    """

    def __init__(self, brokers: int = 3, *, heap: str = "384m", **options: Any) -> None:
        cluster_id = _cluster_id()
        replication = min(brokers, 3)
        self.nodes = [
            LocalKafka(
                heap=heap, node_id=i + 1, cluster_id=cluster_id, replication=replication, **options
            )
            for i in range(brokers)
        ]
        ports = _free_ports(2 * brokers)
        for i, node in enumerate(self.nodes):
            node.port, node.controller_port = ports[2 * i], ports[2 * i + 1]
        voters = ",".join(f"{n.node_id}@{_HOST}:{n.controller_port}" for n in self.nodes)
        for node in self.nodes:
            node.quorum_voters = voters
        self.startup_seconds: float | None = None

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def client_config(self, user: str = ADMIN_USER) -> dict[str, Any]:
        return {**self.nodes[0].client_config(user), "bootstrap.servers": self.bootstrap_servers}

    def start(self, timeout_s: float = 120.0) -> Self:
        started = time.monotonic()
        try:
            for node in self.nodes:
                node.start(timeout_s, wait=False)
            for node in self.nodes:
                node.wait_ready(max(1.0, started + timeout_s - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        log.info(
            "Kafka cluster of %d nodes ready at %s in %.2fs",
            len(self.nodes),
            self.bootstrap_servers,
            self.startup_seconds,
        )
        return self

    def node_by_id(self, node_id: int) -> LocalKafka:
        return next(node for node in self.nodes if node.node_id == node_id)

    def stop(self) -> None:
        """SIGKILL every node and remove the data: one by one, the last nodes' controlled
        shutdown would wait for a controller quorum that is already gone."""
        for node in self.nodes:
            node.kill()
            node.stop()


def _cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64, as ``kafka-storage random-uuid``.

    Like Kafka's own ``Uuid.randomUuid()`` it never starts with '-': the storage tool's
    argument parser would take such an id for an option (1 start in 64 would fail).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# Small and quick: one GC thread is plenty for a test broker and starts fastest.
_JVM_FLAGS = (
    "-XX:+UseSerialGC",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
)


def _java_binary() -> str:
    if os.environ.get("JAVA_HOME"):
        return str(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    return shutil.which("java") or "java"


class _Archive:
    """Class data sharing (AppCDS) for one JVM role over one set of jars: about halves the
    CPU a broker needs to come up (3.3 s -> 1.8 s measured on 2 cores).

    The first run of a role dumps the classes it loaded (JDK 13+ dynamic archive,
    ``-XX:ArchiveClassesAtExit``) to a temporary file, renamed into ``var/kafka/cds/`` once
    the JVM has exited cleanly; later runs map it (``-XX:SharedArchiveFile``). The name
    hashes the java binary, the jars and the flags, so another JDK or release gets its own.
    If the JVM cannot use an archive it runs without one (``-Xshare:auto``); an older JDK
    ignores the options.
    """

    def __init__(self, libs: Path, role: str, *, enabled: bool, dump: bool) -> None:
        self.role = role
        self.path: Path | None = None
        self._tmp: Path | None = None
        if not enabled:
            return
        digest = hashlib.sha256()
        java = Path(_java_binary())
        with contextlib.suppress(OSError):
            java = java.resolve()
            stat = java.stat()
            digest.update(f"{java}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        for jar in sorted(libs.glob("*.jar")):
            digest.update(f"{jar.name}:{jar.stat().st_size}\n".encode())
        digest.update(f"{role}:{_JVM_FLAGS}:{libs}".encode())
        self.path = CDS_DIR / f"{role}-{digest.hexdigest()[:16]}.jsa"
        if not self.path.exists() and dump:
            CDS_DIR.mkdir(parents=True, exist_ok=True)
            self._tmp = self.path.with_suffix(f".{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")

    def flags(self) -> list[str]:
        if self.path is None:
            return []
        if self._tmp is not None:
            option = f"-XX:ArchiveClassesAtExit={self._tmp}"
        elif self.path.exists():
            option = f"-XX:SharedArchiveFile={self.path}"
            with contextlib.suppress(OSError):
                os.utime(self.path)  # in use: see _prune
        else:
            return []
        return ["-XX:+IgnoreUnrecognizedVMOptions", "-Xshare:auto", "-Xlog:cds=off", option]

    def finish(self, returncode: int | None) -> None:
        """After the JVM exited: keep the archive it dumped if it exited cleanly."""
        tmp, self._tmp = self._tmp, None
        if tmp is None or self.path is None:
            return
        # 0: a tool's exit; 143 (or -15): SIGTERM, after Kafka's shutdown hooks ran
        if returncode in (0, 143, -signal.SIGTERM) and tmp.exists() and tmp.stat().st_size:
            os.replace(tmp, self.path)
            log.info("Kafka %s class data archive written: %s", self.role, self.path)
            self._prune()
        else:
            tmp.unlink(missing_ok=True)

    def _prune(self, unused_days: float = 14.0) -> None:
        """Drop archives (of other jars or JDKs) unused for ``unused_days``."""
        cutoff = time.time() - unused_days * 86400
        for path in CDS_DIR.glob("*.jsa"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()


_KEPT = "KEPT"
_LOCK = ".lock"


def _lock_dir(path: Path) -> IO[bytes]:
    """Hold an exclusive flock on ``path/.lock`` for as long as this process lives."""
    lock = open(path / _LOCK, "wb")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return lock


def _sweep_stale_data_dirs(min_age_s: float = 60.0) -> None:
    """Remove temporary data dirs whose owner died without ``stop()`` (a killed test run).

    A dir is in use while its owner holds the flock on its ``.lock`` (the kernel drops it
    when the owner dies); dirs stopped with ``keep_data`` are marked ``KEPT`` and stay.
    """
    if not TMP_DIR.is_dir():
        return
    now = time.time()
    for path in TMP_DIR.glob("broker-*"):
        try:
            if (path / _KEPT).exists() or now - path.stat().st_mtime < min_age_s:
                continue
            lock = _lock_dir(path)
        except OSError:  # held (BlockingIOError) or gone meanwhile
            continue
        try:
            pid = int((path / "broker.pid").read_text())
            if _pid_alive(pid):  # an orphaned broker still runs from it: leave it
                continue
        except (OSError, ValueError):
            pass
        finally:
            lock.close()
        shutil.rmtree(path, ignore_errors=True)
        log.debug("removed stale Kafka data dir %s", path)


class _PortInUse(RuntimeError):
    pass


_QUIET_LIBRDKAFKA = logging.getLogger(f"{__name__}.librdkafka")
_QUIET_LIBRDKAFKA.setLevel(logging.CRITICAL)  # refused connections while it boots
_LIVE: weakref.WeakSet[LocalKafka] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """No broker outlives the Python process that started it (unless daemonized)."""
    for kafka in list(_LIVE):
        if kafka.die_with_parent:
            kafka.stop()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _load_prctl()  # looked up here: the child after fork() should only call it
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGTERM it if the parent dies (Linux PR_SET_PDEATHSIG), so a test run
    killed with SIGKILL leaves no broker behind. The signal follows the *thread* that
    forked, hence only used when starting from the main thread."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


# --- the `kafka-local` command ----------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie or a recycled pid that is not java is not our broker
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return b"kafka.Kafka" in cmdline
    return True


def _daemon_state() -> tuple[int, str] | None:
    pid_file, address_file = STATE_DIR / "pid", STATE_DIR / "bootstrap"
    try:
        pid, address = int(pid_file.read_text()), address_file.read_text().strip()
    except (OSError, ValueError):
        return None
    return (pid, address) if _pid_alive(pid) else None


def _stop_daemon(timeout_s: float = 30.0) -> bool:
    state = _daemon_state()
    for name in ("pid", "bootstrap", "credentials"):
        (STATE_DIR / name).unlink(missing_ok=True)
    if state is None:
        return False
    pid = state[0]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def _parse_users(values: list[str]) -> dict[str, str]:
    users = {}
    for value in values:
        name, sep, password = value.partition("=")
        if not sep or not name or not password:
            raise SystemExit(f"--user wants NAME=PASSWORD, got {value!r}")
        users[name] = password
    return users


def main(argv: list[str] | None = None) -> int:
    """``start`` runs a broker in the foreground until Ctrl-C; ``--daemon`` detaches it."""
    parser = argparse.ArgumentParser(
        prog="kafka-local",
        description="A local Apache Kafka broker (KRaft) from the project's pinned jars.",
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "--daemon",
        action="store_true",
        help=f"run in the background; pid and address go to {STATE_DIR.relative_to(ROOT)}/",
    )
    parser.add_argument("--authenticated", action="store_true", help="SASL/PLAIN + ACLs")
    parser.add_argument(
        "--user", action="append", default=[], metavar="NAME=PASSWORD", help="a SASL user"
    )
    parser.add_argument("--heap", default="512m")
    parser.add_argument(
        "--brokers", type=int, default=1, choices=(1, 3), help="1 node, or a cluster of 3"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.action == "status":
        state = _daemon_state()
        if state is None:
            print("not running")
            return 1
        print(f"running (pid {state[0]}) at {state[1]}")
        return 0
    if args.action == "stop":
        print("stopped" if _stop_daemon() else "not running")
        return 0

    kafka_args: dict[str, Any] = {
        "authenticated": args.authenticated,
        "users": _parse_users(args.user),
        "heap": args.heap,
    }
    if args.brokers > 1:
        if args.daemon:
            raise SystemExit("--daemon runs one broker; run a cluster in the foreground")
        return _run_cluster(args.brokers, kafka_args)
    if args.daemon:
        if (state := _daemon_state()) is not None:
            print(f"already running (pid {state[0]}) at {state[1]}", file=sys.stderr)
            return 1
        data = STATE_DIR / "data"
        shutil.rmtree(data, ignore_errors=True)  # a daemon starts empty; logs stay until then
        kafka = LocalKafka(data, die_with_parent=False, **kafka_args).start()
        assert kafka.process is not None
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / "pid").write_text(f"{kafka.process.pid}\n")
        (STATE_DIR / "bootstrap").write_text(f"{kafka.bootstrap_servers}\n")
        if args.authenticated:
            creds = STATE_DIR / "credentials"
            creds.write_text("".join(f"{u}={p}\n" for u, p in kafka.users.items()))
            creds.chmod(0o600)
        kafka.process = None  # detach: this process exits, the broker keeps running
        print(kafka.bootstrap_servers)
        return 0

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    with LocalKafka(**kafka_args) as kafka:
        print(
            f"KAFKA_BOOTSTRAP_SERVERS={kafka.bootstrap_servers}  "
            f"(Kafka {kafka.kafka_version}, ready in {kafka.startup_seconds:.1f}s; Ctrl-C stops)",
            flush=True,
        )
        if kafka.authenticated:
            print(f"super user: {kafka.super_user.username} / {kafka.super_user.password}")
        while not stop.wait(0.5):
            if not kafka.running:
                print(f"Kafka exited; see {kafka.log_file}", file=sys.stderr)
                kafka.keep_data = True
                return 1
    return 0


def _run_cluster(brokers: int, kafka_args: dict[str, Any]) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    with LocalCluster(brokers, **kafka_args) as cluster:
        print(
            f"KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap_servers}  ({brokers} nodes, ready in"
            f" {cluster.startup_seconds:.1f}s; Ctrl-C stops)",
            flush=True,
        )
        while not stop.wait(0.5):
            if not all(node.running for node in cluster.nodes):
                print("a Kafka node exited; see server.log in its data dir", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
