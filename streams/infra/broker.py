"""A real Apache Kafka broker (KRaft, one combined broker/controller) on loopback.

The jars come from Maven Central through the pinned manifest in
``infra/kafka/pom.xml`` (``streams.infra.fetch``); Java runs them directly, no
scripts or downloads beyond that. Used by the demo, the test fixtures and the
benchmarks; developers can run one with ``bin/kafka-local``.

``LocalKafka(authenticated=True)`` turns on SASL/PLAIN on the client listener
and the KRaft ``StandardAuthorizer`` with no access unless an ACL grants it,
for the R18 least-privilege tests.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from streams.infra.fetch import ROOT, kafka_classpath

log = logging.getLogger(__name__)

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret"  # a local test broker's credential, never a real one

_LOG4J = """log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log_file}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalKafka:
    """Start/stop a single-node KRaft broker bound to 127.0.0.1 on free ports."""

    def __init__(
        self,
        data_dir: Path | None = None,
        authenticated: bool = False,
        users: dict[str, str] | None = None,
        heap: str = "512m",
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="kafka-", dir=_var_dir()))
        self.authenticated = authenticated
        self.users = {ADMIN_USER: ADMIN_PASSWORD, **(users or {})}
        self.heap = heap
        self.port = free_port()
        self.controller_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_config(self, user: str = ADMIN_USER) -> dict[str, str]:
        """librdkafka settings to connect as ``user`` (just the address when unauthenticated)."""
        config = {"bootstrap.servers": self.bootstrap_servers}
        if self.authenticated:
            config.update(
                {
                    "security.protocol": "SASL_PLAINTEXT",
                    "sasl.mechanism": "PLAIN",
                    "sasl.username": user,
                    "sasl.password": self.users[user],
                }
            )
        return config

    # --- lifecycle ------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> LocalKafka:
        started = time.monotonic()
        properties = self._write_config()
        log_dir = self.data_dir / "logs"
        if not (log_dir / "meta.properties").exists():
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                _cluster_id(),
                "-c",
                str(properties),
                "--ignore-formatted",
            ).check_returncode()
        self.process = subprocess.Popen(
            self._java_command("kafka.Kafka", str(properties)),
            stdout=subprocess.DEVNULL,
            stderr=open(self.data_dir / "stderr.log", "ab"),  # noqa: SIM115
            start_new_session=True,
        )
        self._wait_ready(timeout_s)
        self.startup_seconds = time.monotonic() - started
        log.info("kafka ready at %s in %.1fs", self.bootstrap_servers, self.startup_seconds)
        return self

    def stop(self, keep_data: bool = False) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self._own_dir and not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def restart(self, timeout_s: float = 60.0) -> None:
        """Stop and start again on the same ports with the same data (chaos tests)."""
        self.stop(keep_data=True)
        self.start(timeout_s)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals ----------------------------------------------------------------
    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        client_protocol = "SASL_PLAINTEXT" if self.authenticated else "PLAINTEXT"
        lines = [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=CLIENT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=CLIENT://127.0.0.1:{self.port}",
            f"listener.security.protocol.map=CLIENT:{client_protocol},CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=CLIENT",
            "controller.listener.names=CONTROLLER",
            f"log.dirs={self.data_dir / 'logs'}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=6",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=6",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.cleaner.backoff.ms=1000",
            "num.network.threads=2",
            "num.io.threads=4",
            "log.flush.interval.messages=9223372036854775807",
            "transaction.abort.timed.out.transaction.cleanup.interval.ms=5000",
        ]
        if self.authenticated:
            users = " ".join(f'user_{u}="{p}"' for u, p in self.users.items())
            lines += [
                "sasl.enabled.mechanisms=PLAIN",
                "sasl.mechanism.inter.broker.protocol=PLAIN",
                "listener.name.client.plain.sasl.jaas.config="
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{ADMIN_USER}" password="{ADMIN_PASSWORD}" {users};',
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                f"super.users=User:{ADMIN_USER};User:ANONYMOUS",  # ANONYMOUS: the controller link
                "allow.everyone.if.no.acl.found=false",
            ]
        path = self.data_dir / "server.properties"
        path.write_text("\n".join(lines) + "\n")
        (self.data_dir / "log4j.properties").write_text(
            _LOG4J.format(log_file=self.data_dir / "server.log")
        )
        return path

    def _java_command(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1" if main != "kafka.Kafka" else "-XX:+UseStringDeduplication",
            "-Xshare:auto",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
            "-cp",
            kafka_classpath(),
            main,
            *args,
        ]

    def _java(self, main: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self._java_command(main, *args), capture_output=True, timeout=120)

    def _wait_ready(self, timeout_s: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"kafka exited early; see {self.data_dir}/server.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.1)
                continue
            admin = AdminClient({**self.client_config(), "socket.timeout.ms": 2000})
            try:
                metadata = admin.list_topics(timeout=2)
                if metadata.brokers:
                    return
            except Exception:
                time.sleep(0.1)
        raise TimeoutError(f"kafka not ready in {timeout_s}s; see {self.data_dir}/server.log")


def _cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _var_dir() -> Path:
    path = ROOT / "var"
    path.mkdir(exist_ok=True)
    return path


_STATE = ROOT / "var" / "kafka-local"


def main(argv: list[str] | None = None) -> None:
    """``start`` runs a broker in the foreground until Ctrl-C; ``--daemon`` detaches it."""
    parser = argparse.ArgumentParser(prog="kafka-local", description="local KRaft broker")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--daemon", action="store_true", help="start in the background")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pid_file, address_file = _STATE / "pid", _STATE / "bootstrap"
    if args.action == "status":
        print(address_file.read_text() if address_file.exists() else "not running")
        return
    if args.action == "stop":
        if pid_file.exists():
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
            pid_file.unlink()
            address_file.unlink(missing_ok=True)
        return
    if args.daemon:
        _STATE.mkdir(parents=True, exist_ok=True)
        kafka = LocalKafka(data_dir=_STATE / "data")
        kafka.start()
        assert kafka.process is not None
        pid_file.write_text(str(kafka.process.pid))
        address_file.write_text(kafka.bootstrap_servers)
        print(kafka.bootstrap_servers)
        return
    with LocalKafka() as kafka:
        print(f"KAFKA_BOOTSTRAP_SERVERS={kafka.bootstrap_servers}  (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    sys.exit(0)


if __name__ == "__main__":
    main()
