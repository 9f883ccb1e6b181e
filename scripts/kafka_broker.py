#!/usr/bin/env python
"""A real single-node Kafka broker (KRaft, broker + controller in one JVM) on 127.0.0.1, no Docker.

    .venv/bin/python scripts/kafka_broker.py start [--state-dir .kafka] [--version 4.1.1]
    .venv/bin/python scripts/kafka_broker.py stop  [--state-dir .kafka]

`start` resolves Apache Kafka's broker jars (org.apache.kafka:kafka_2.13) from Maven Central with
Maven, once, into ~/.cache/lakehouse/kafka-<version>/libs (Maven's own ~/.m2 cache makes a second
resolution offline); writes a KRaft configuration for free ports; formats the storage
(`kafka.tools.StorageTool format --standalone`); starts `kafka.Kafka`; waits until the broker
accepts connections; and prints the bootstrap servers (also written to <state-dir>/bootstrap).
`stop` ends the broker (SIGTERM, then SIGKILL). Logs go to <state-dir>/broker.log.

Work towards the Kafka issue: the bronze Kafka source, `generate --sink kafka` and the tests
that use this broker are not built yet.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_VERSION = "4.1.1"
POM = """<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>lakehouse</groupId><artifactId>kafka-broker-jars</artifactId><version>1</version>
<dependencies><dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
<version>{version}</version></dependency></dependencies></project>
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker_jars(version: str) -> Path:
    """The broker's jars with their dependencies, resolved from Maven Central once."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lakehouse" / f"kafka-{version}" / "libs"
    if cache.is_dir() and any(cache.glob(f"kafka_2.13-{version}.jar")):
        return cache
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pom.xml").write_text(POM.format(version=version))
        print(f"resolving org.apache.kafka:kafka_2.13:{version} from Maven Central (once)", flush=True)
        result = subprocess.run(["mvn", "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={cache}",
                                 "-DincludeScope=runtime"], cwd=tmp, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"Maven could not resolve the Kafka broker jars:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return cache


def start(state: Path, version: str, partitions: int, timeout: float = 60.0) -> str:
    if (state / "broker.pid").is_file():
        raise SystemExit(f"a broker started from {state} may still run: stop it first")
    libs = broker_jars(version)
    state.mkdir(parents=True, exist_ok=True)
    port, controller = free_port(), free_port()
    properties = state / "server.properties"
    properties.write_text("\n".join([
        "process.roles=broker,controller", "node.id=1",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}", "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{controller}", f"log.dirs={state / 'data'}",
        "offsets.topic.replication.factor=1", "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1", "group.initial.rebalance.delay.ms=0", f"num.partitions={partitions}",
        "message.max.bytes=2097152", "",
    ]))
    java = [os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java",
            "-cp", str(libs / "*")]
    if not (state / "data" / "meta.properties").is_file():
        cluster_id = subprocess.run([*java, "kafka.tools.StorageTool", "random-uuid"], capture_output=True,
                                    text=True, check=True).stdout.strip().splitlines()[-1]
        subprocess.run([*java, "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
                        "-c", str(properties)], capture_output=True, text=True, check=True)
    log = open(state / "broker.log", "ab")
    broker = subprocess.Popen([*java[:1], "-Xmx512m", *java[1:], "kafka.Kafka", str(properties)], stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    (state / "broker.pid").write_text(str(broker.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker.poll() is not None:
            (state / "broker.pid").unlink(missing_ok=True)
            raise SystemExit(f"the broker exited with {broker.returncode}: see {state / 'broker.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                bootstrap = f"127.0.0.1:{port}"
                (state / "bootstrap").write_text(bootstrap)
                print(f"Kafka {version} broker (KRaft) at {bootstrap}", flush=True)
                return bootstrap
        except OSError:
            time.sleep(0.5)
    stop(state)
    raise SystemExit(f"the broker did not accept connections within {timeout:.0f} s: see {state / 'broker.log'}")


def stop(state: Path) -> None:
    pid_file = state / "broker.pid"
    if not pid_file.is_file():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.3)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    (state / "bootstrap").unlink(missing_ok=True)
    print("broker stopped", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--state-dir", default=".kafka", help="config, data, log and pid (default: .kafka)")
    parser.add_argument("--version", default=DEFAULT_VERSION, help="Kafka broker version from Maven Central")
    parser.add_argument("--partitions", type=int, default=3, help="default partitions of a new topic")
    args = parser.parse_args()
    state = Path(args.state_dir).absolute()
    if args.action == "start":
        start(state, args.version, args.partitions)
    else:
        stop(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
