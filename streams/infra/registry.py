"""A real schema registry speaking the Confluent Schema Registry REST API, on loopback.

It is Apicurio Registry 2.6 with in-memory (H2) storage: its ``/apis/ccompat/v7`` API is
what confluent-kafka's ``SchemaRegistryClient`` talks to, so ``LocalSchemaRegistry().url``
includes that prefix. Maven Central publishes the ready-built Quarkus application (the
``all`` tar.gz of ``io.apicurio:apicurio-registry-app``); the pinned manifest
``infra/registry/pom.xml`` unpacks it into ``var/registry-dist`` once (a stamp holding the
manifest's hash makes the next call free) and Java 17 runs it; no broker is needed.
Apicurio 3.x is compiled for Java 21, hence 2.6 (see the manifest).

On first use a short training run also records an AppCDS archive of the classes the
registry loads (``var/registry-dist/app-cds.jsa``), which cuts start→ready roughly in half;
when the JVM cannot write or use it, the registry simply starts without it.

Behaviour made to match Confluent's registry by configuration:
- the global compatibility is BACKWARD (Confluent's default; Apicurio's is NONE), both
  enforced and reported by ``GET /config``;
- re-registering a schema that differs only in formatting returns the existing version
  (canonical hash), and identical schemas share one id across subjects (content ids);
- ``GET /subjects`` is not cut at Apicurio's default of 1000 subjects.

Developers can run one with ``bin/registry-local``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Self

from streams.infra.started import Started

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "infra" / "registry" / "pom.xml"
DIST_DIR = ROOT / "var" / "registry-dist"
CCOMPAT_PATH = "/apis/ccompat/v7"
_CDS_ARCHIVE = "app-cds.jsa"
_CDS_STAMP = ".app-cds-key"
_MANIFEST_STAMP = ".manifest-sha256"


def prepare(dist_dir: Path = DIST_DIR) -> tuple[Path, Path | None]:
    """The runner jar and AppCDS archive (None if unavailable), made first if missing or stale.

    Safe to call from concurrent processes: the first one fetches and trains under a file
    lock, the others wait for it; a running registry keeps its files through a re-fetch.
    """
    ready = _prepared(dist_dir)
    if ready is not None:
        return ready
    dist_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(dist_dir.with_name(dist_dir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _fetched(dist_dir):
            _fetch(dist_dir)
        if not _trained(dist_dir):
            _train(dist_dir)
    ready = _prepared(dist_dir)
    assert ready is not None
    return ready


def fetch(dist_dir: Path = DIST_DIR) -> Path:
    """The registry's runner jar (``prepare`` without caring about the AppCDS archive)."""
    return prepare(dist_dir)[0]


def _prepared(dist_dir: Path) -> tuple[Path, Path | None] | None:
    runner = _runner_jar(dist_dir)
    if runner is None or not _fetched(dist_dir) or not _trained(dist_dir):
        return None
    archive = dist_dir / _CDS_ARCHIVE
    return runner, archive if archive.exists() else None


def _fetched(dist_dir: Path) -> bool:
    stamp = dist_dir / _MANIFEST_STAMP
    return (
        stamp.exists()
        and stamp.read_text() == _manifest_digest()
        and _runner_jar(dist_dir) is not None
    )


def _fetch(dist_dir: Path) -> None:
    """Unpack the pinned distribution beside ``dist_dir``, then swap it in."""
    if shutil.which("mvn") is None:
        raise RuntimeError(
            "Maven (mvn) is needed to fetch the schema registry: apt-get install maven"
        )
    fresh = dist_dir.with_name(f"{dist_dir.name}.new-{uuid.uuid4().hex[:8]}")
    done = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(MANIFEST),
            "dependency:unpack@registry",
            f"-Dregistry.dir={fresh}",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or _runner_jar(fresh) is None:
        shutil.rmtree(fresh, ignore_errors=True)
        raise RuntimeError(
            f"fetching the schema registry failed (mvn exit {done.returncode}):\n"
            + (done.stdout + done.stderr)[-4000:]
        )
    (fresh / _MANIFEST_STAMP).write_text(_manifest_digest())
    old = dist_dir.with_name(f"{dist_dir.name}.old-{uuid.uuid4().hex[:8]}")
    if dist_dir.exists():
        dist_dir.rename(old)
    fresh.rename(dist_dir)
    shutil.rmtree(old, ignore_errors=True)


def _manifest_digest() -> str:
    return hashlib.sha256(MANIFEST.read_bytes()).hexdigest()


def _runner_jar(dist_dir: Path) -> Path | None:
    runners = sorted(dist_dir.glob("apicurio-registry-app-*-runner.jar"))
    return runners[0] if runners else None


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(
            "Java 17+ is needed to run the schema registry: apt-get install default-jre-headless"
        )
    return java


def _cds_key() -> str:
    """What the AppCDS archive depends on: the JVM binary and the registry's jars."""
    return f"{os.path.realpath(_java())}\n{_manifest_digest()}\n"


def _trained(dist_dir: Path) -> bool:
    stamp = dist_dir / _CDS_STAMP
    return stamp.exists() and stamp.read_text() == _cds_key()


def _train(dist_dir: Path) -> None:
    """Record the AppCDS archive with one training run. A failure is remembered (stamped) so
    that it is not retried on every start: no archive is a slower start, never a failure."""
    archive = dist_dir / _CDS_ARCHIVE
    archive.unlink(missing_ok=True)
    partial = dist_dir / f"app-cds-{uuid.uuid4().hex[:8]}.jsa"
    runner = _runner_jar(dist_dir)
    assert runner is not None
    trainer = LocalSchemaRegistry(_runner=runner, _dump_archive=partial)
    try:
        trainer.start()
        trainer._exercise()
    except Exception as e:
        log.warning("schema registry AppCDS training run failed: %s", e)
    finally:
        trainer.stop()
    if partial.exists() and partial.stat().st_size > 0:
        os.replace(partial, archive)
    partial.unlink(missing_ok=True)
    (dist_dir / _CDS_STAMP).write_text(_cds_key())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalSchemaRegistry(Started):
    """Start/stop an in-memory Confluent-compatible schema registry on 127.0.0.1, free port.

    ``url`` is what ``SchemaRegistryClient({"url": ...})`` takes. ``startup_seconds`` is the
    time from launching the JVM to the registry answering (not counting a first fetch).
    Logs go to ``<run_dir>/registry.log`` (``stderr.log`` for the JVM itself).
    """

    def __init__(
        self,
        run_dir: Path | None = None,
        heap: str = "256m",
        compatibility: str | None = "BACKWARD",
        use_cds: bool = True,
        _runner: Path | None = None,
        _dump_archive: Path | None = None,
    ) -> None:
        self._own_dir = run_dir is None
        self.run_dir: Path | None = run_dir
        self.heap = heap
        self.compatibility = compatibility
        self.use_cds = use_cds
        self._runner = _runner  # set: a training run, which prepare() itself starts
        self._dump_archive = _dump_archive
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def base_url(self) -> str:
        """The server root (health endpoints, Apicurio's own APIs)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API, for ``SchemaRegistryClient({"url": url})``."""
        return self.base_url + CCOMPAT_PATH

    @property
    def log_file(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "registry.log"

    # --- lifecycle ------------------------------------------------------------------
    def start(self, timeout_s: float = 90.0) -> Self:
        if self._runner is not None:
            runner, archive = self._runner, None
        else:
            runner, archive = prepare()
            archive = archive if self.use_cds else None
        if self.run_dir is None:
            var = ROOT / "var"
            var.mkdir(exist_ok=True)
            self.run_dir = Path(tempfile.mkdtemp(prefix="registry-", dir=var))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            started = time.monotonic()
            self._launch(runner, archive)
            try:
                self._wait_ready(timeout_s)
                if self.compatibility is not None:
                    self._request("PUT", "/config", {"compatibility": self.compatibility})
            except _PortTaken:
                if attempt == 2:
                    raise
                self.port = _free_port()  # another process bound it first: try another
                continue
            except BaseException:
                self._terminate()
                raise
            break
        self.startup_seconds = time.monotonic() - started
        atexit.register(self.stop)  # no orphaned JVM if the caller forgets stop()
        log.log(
            logging.DEBUG if self._dump_archive else logging.INFO,
            "schema registry ready at %s in %.1fs",
            self.url,
            self.startup_seconds,
        )
        return self

    def stop(self) -> None:
        atexit.unregister(self.stop)
        self._terminate()
        if self._own_dir and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None

    # --- internals ----------------------------------------------------------------
    def _command(self, runner: Path, archive: Path | None) -> list[str]:
        assert self.run_dir is not None
        jvm = [
            _java(),
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # C1 only: starts faster; the registry does little work
            "-Xss512k",
            "-Djava.awt.headless=true",
            "-Xshare:auto",
        ]
        if archive is not None:
            jvm.append(f"-XX:SharedArchiveFile={archive}")
        if self._dump_archive is not None:
            jvm.append(f"-XX:ArchiveClassesAtExit={self._dump_archive}")
        settings = {
            "quarkus.http.host": "127.0.0.1",
            "quarkus.http.port": str(self.port),
            "quarkus.log.console.enable": "false",
            "quarkus.log.file.enable": "true",
            "quarkus.log.file.path": str(self.run_dir / "registry.log"),
            "quarkus.datasource.jdbc.min-size": "1",
            "quarkus.datasource.jdbc.initial-size": "1",
            # Confluent parity (module docstring).
            "registry.rules.global.compatibility": self.compatibility or "NONE",
            "registry.ccompat.use-canonical-hash": "true",
            "registry.ccompat.legacy-id-mode.enabled": "false",
            "registry.ccompat.max-subjects": "1000000",
        }
        return [*jvm, *(f"-D{k}={v}" for k, v in settings.items()), "-jar", str(runner)]

    def _launch(self, runner: Path, archive: Path | None) -> None:
        assert self.run_dir is not None
        with open(self.run_dir / "stderr.log", "ab") as err:
            self.process = subprocess.Popen(
                self._command(runner, archive),
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                if "in use" in self._log_tail():  # Quarkus: "Port N seems to be in use ..."
                    raise _PortTaken()
                raise RuntimeError(f"schema registry exited early; see {self.run_dir}")
            try:
                with urllib.request.urlopen(self.base_url + "/health/ready", timeout=2) as r:
                    if r.status == 200:
                        self._request("GET", "/subjects")
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"schema registry not ready in {timeout_s}s; see {self.run_dir}")

    def _log_tail(self) -> str:
        if self.run_dir is None:
            return ""
        text = ""
        for name in ("registry.log", "stderr.log"):
            with contextlib.suppress(OSError):
                text += (self.run_dir / name).read_text(errors="replace")[-4000:]
        return text

    def _request(self, method: str, path: str, body: object | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def _exercise(self) -> None:
        """Register, look up and check a schema, so a training run loads those classes."""
        subject = "app-cds-training-value"
        fields: list[dict[str, object]] = [{"name": "a", "type": "string"}]
        schema = {"type": "record", "name": "Training", "fields": fields}
        self._request("POST", f"/subjects/{subject}/versions", {"schema": json.dumps(schema)})
        self._request("PUT", f"/config/{subject}", {"compatibility": "BACKWARD"})
        evolved = {**schema, "fields": [*fields, {"name": "b", "type": "int", "default": 0}]}
        self._request(
            "POST",
            f"/compatibility/subjects/{subject}/versions/latest",
            {"schema": json.dumps(evolved)},
        )
        self._request("POST", f"/subjects/{subject}", {"schema": json.dumps(schema)})
        self._request("GET", "/schemas/ids/1")

    def detach(self) -> None:
        """Leave the registry running after this Python process exits (``--daemon``)."""
        atexit.unregister(self.stop)

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)  # a training run writes its archive on the way out
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


class _PortTaken(Exception):
    pass


_STATE = ROOT / "var" / "registry-local"


def main(argv: list[str] | None = None) -> None:
    """``start`` runs a registry in the foreground until Ctrl-C; ``--daemon`` detaches it."""
    parser = argparse.ArgumentParser(
        prog="registry-local", description="local Confluent-compatible schema registry"
    )
    parser.add_argument("action", choices=["start", "stop", "status", "fetch"])
    parser.add_argument("--daemon", action="store_true", help="start in the background")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pid_file, url_file = _STATE / "pid", _STATE / "url"
    if args.action == "fetch":
        runner, archive = prepare()
        print(f"schema registry: {runner} (AppCDS archive: {archive or 'none'})")
        return
    if args.action == "status":
        print(url_file.read_text() if url_file.exists() else "not running")
        return
    if args.action == "stop":
        if pid_file.exists():
            pid = int(pid_file.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            pid_file.unlink()
            url_file.unlink(missing_ok=True)
        return
    if args.daemon:
        if pid_file.exists():
            sys.exit(f"already running ({url_file.read_text() if url_file.exists() else '?'})")
        _STATE.mkdir(parents=True, exist_ok=True)
        registry = LocalSchemaRegistry(run_dir=_STATE / "run")
        registry.start()
        registry.detach()
        assert registry.process is not None
        pid_file.write_text(str(registry.process.pid))
        url_file.write_text(registry.url)
        print(registry.url)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the JVM on a plain kill too
    with LocalSchemaRegistry() as registry:
        print(f"SCHEMA_REGISTRY_URL={registry.url}  (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    sys.exit(0)


if __name__ == "__main__":
    main()
