"""Fetch the JVM parts of the local stack from Maven Central, by pinned manifests.

Each manifest under ``infra/`` is resolved with ``mvn dependency:copy-dependencies``
into ``var/<name>-libs``; a stamp holding the manifest's hash makes the next
call free. ``python -m streams.infra.fetch`` fetches everything (CI runs it
before the tests so a test never waits on a download).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = {"kafka": ROOT / "infra" / "kafka" / "pom.xml"}


def libs_dir(name: str) -> Path:
    """The jar folder of ``name``, fetched first if missing or stale."""
    manifest = MANIFESTS[name]
    target = ROOT / "var" / f"{name}-libs"
    stamp = target / ".manifest-sha256"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return target
    if shutil.which("mvn") is None:
        raise RuntimeError(
            "Maven (mvn) is needed to fetch the broker's jars: apt-get install maven"
        )
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(manifest),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={target}",
        ],
        check=True,
    )
    stamp.write_text(digest)
    return target


def kafka_classpath() -> str:
    return str(libs_dir("kafka") / "*")


def main() -> None:
    for name in MANIFESTS:
        print(f"{name}: {libs_dir(name)}")
    from streams.infra.registry import prepare

    runner, archive = prepare()
    print(f"registry: {runner}{' (class archive ready)' if archive else ''}")


if __name__ == "__main__":
    main()
