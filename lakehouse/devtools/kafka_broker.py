"""A real single-node Kafka broker (KRaft, broker + controller in one JVM) on 127.0.0.1, no Docker.

For tests, demos and benchmarks (production reads an existing Kafka cluster):

    .venv/bin/python scripts/kafka_broker.py start [--state-dir .kafka] [--version 4.1.1]
    .venv/bin/python scripts/kafka_broker.py stop  [--state-dir .kafka]

`start` resolves Apache Kafka's broker jars (org.apache.kafka:kafka_2.13) from Maven Central with
Maven, once, into ~/.cache/lakehouse/kafka-<version>/libs (Maven's own ~/.m2 cache makes a second
resolution offline); writes a KRaft configuration for free ports; formats the storage
(`kafka.tools.StorageTool format --standalone`); starts `kafka.Kafka`; waits until the broker
accepts connections; and prints the bootstrap servers (also written to <state-dir>/bootstrap).
A second start from the same state directory keeps its ports and its data (a restart), so a
stream's checkpointed offsets stay valid. `stop` ends the broker (SIGTERM, then SIGKILL).
Logs go to <state-dir>/broker.log. :class:`KafkaBroker` does the same from Python.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lakehouse.errors import JobError
from lakehouse.fs import one_at_a_time, user_cache
from lakehouse.processes import start_time, started_process, still_running, write_pid_file

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
    """The broker's jars with their dependencies, resolved from Maven Central once (one process at
    a time: two brokers started together on a fresh machine would copy into one folder)."""
    cache = user_cache(f"kafka-{version}", "libs")
    complete = cache.parent / "resolved"  # written after a whole resolution, so a partial one is redone
    if complete.is_file():
        return cache
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is needed once to fetch the Kafka broker's jars: apt-get install maven")
    with one_at_a_time(cache.parent / "resolving.lock", "waiting for another process resolving the Kafka broker's jars"):
        if not complete.is_file():  # not resolved by the process this one waited for
            _resolve_broker_jars(version, cache)
            complete.write_text(f"org.apache.kafka:kafka_2.13:{version}\n")
    return cache


def _resolve_broker_jars(version: str, into: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pom.xml").write_text(POM.format(version=version))
        print(f"resolving org.apache.kafka:kafka_2.13:{version} from Maven Central (once)", flush=True)
        result = subprocess.run(["mvn", "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={into}",
                                 "-DincludeScope=runtime"], cwd=tmp, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(f"Maven could not resolve the Kafka broker jars:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


class BrokerError(JobError):
    """The broker could not be resolved, formatted or started."""


def _previous_ports(properties: Path) -> tuple[int, int] | None:
    """The ports a broker from this state directory listened on (kept across restarts)."""
    if not properties.is_file():
        return None
    listeners = next((line for line in properties.read_text().splitlines() if line.startswith("listeners=")), "")
    ports = [int(part.rsplit(":", 1)[1]) for part in listeners.split("=", 1)[-1].split(",") if ":" in part]
    return (ports[0], ports[1]) if len(ports) == 2 else None


def start(state: Path, version: str = DEFAULT_VERSION, partitions: int = 3, timeout: float = 60.0) -> str:
    """Start (or restart) the broker of ``state``; returns its bootstrap servers."""
    if (state / "broker.pid").is_file():
        pid = started_process(state / "broker.pid", _expected_command(state))
        if pid is not None and _alive(pid):
            raise BrokerError(f"a broker started from {state} still runs (pid {pid}): stop it first")
        (state / "broker.pid").unlink()  # stale: that broker is gone
    libs = broker_jars(version)
    state.mkdir(parents=True, exist_ok=True)
    properties = state / "server.properties"
    port, controller = _previous_ports(properties) or (free_port(), free_port())
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
        try:
            cluster_id = subprocess.run([*java, "kafka.tools.StorageTool", "random-uuid"], capture_output=True,
                                        text=True, check=True).stdout.strip().splitlines()[-1]
            subprocess.run([*java, "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
                            "-c", str(properties)], capture_output=True, text=True, check=True)
        except subprocess.CalledProcessError as exc:
            raise BrokerError(f"formatting the broker's storage failed: {(exc.stderr or exc.stdout)[-2000:]}") from exc
    with open(state / "broker.log", "ab") as log:
        broker = subprocess.Popen([*java[:1], "-Xmx512m", *java[1:], "kafka.Kafka", str(properties.resolve())], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    _children[broker.pid] = broker  # so stop() can reap it (a dead child would linger as a zombie)
    write_pid_file(state / "broker.pid", broker.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker.poll() is not None:
            (state / "broker.pid").unlink(missing_ok=True)
            raise BrokerError(f"the broker exited with {broker.returncode}: see {state / 'broker.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                bootstrap = f"127.0.0.1:{port}"
                (state / "bootstrap").write_text(bootstrap)
                print(f"Kafka {version} broker (KRaft) at {bootstrap}", flush=True)
                return bootstrap
        except OSError:
            time.sleep(0.5)
    stop(state)
    raise BrokerError(f"the broker did not accept connections within {timeout:.0f} s: see {state / 'broker.log'}")


_children: dict[int, subprocess.Popen] = {}  # brokers this process started


def _expected_command(state: Path) -> str:
    """What the command line of this state directory's broker contains: its properties file."""
    return f"kafka.Kafka {(state / 'server.properties').resolve()}"


def _alive(pid: int, started: str | None) -> bool:
    """Whether the broker ``pid`` (started at ``started``) still runs. A broker this process started
    is asked through its Popen: it is not reaped before stop() waits for it, so its pid cannot pass
    to another process meanwhile. Another's broker is compared by start time, as its pid can."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    return still_running(pid, started)


def stop(state: Path, quiet: bool = False) -> None:
    """Stop the broker of ``state`` (SIGTERM, SIGKILL after 30 s); its data stays for a restart."""
    pid_file = state / "broker.pid"
    if not pid_file.is_file():
        return
    pid = started_process(pid_file, _expected_command(state))
    if pid is None:  # stale: the pid is no broker of this state directory (any more); signal nothing
        pid_file.unlink(missing_ok=True)
        (state / "bootstrap").unlink(missing_ok=True)
        if not quiet:
            print(f"no broker of {state} runs (removed its stale pid file)", flush=True)
        return
    started = start_time(pid)
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid, started):
            time.sleep(0.2)
        if _alive(pid, started):
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child = _children.pop(pid, None)
    if child is not None:
        child.wait(timeout=30)
    pid_file.unlink(missing_ok=True)
    (state / "bootstrap").unlink(missing_ok=True)
    if not quiet:
        print("broker stopped", flush=True)


class KafkaBroker:
    """A broker in ``state_dir`` as a context manager: started on entry, stopped on exit (also
    when the block fails)."""

    def __init__(self, state_dir: str | Path, version: str = DEFAULT_VERSION, partitions: int = 3):
        self.state = Path(state_dir).absolute()
        self.version, self.partitions = version, partitions
        self.bootstrap: str | None = None

    def start(self, timeout: float = 60.0) -> str:
        self.bootstrap = start(self.state, self.version, self.partitions, timeout)
        return self.bootstrap

    def stop(self) -> None:
        stop(self.state, quiet=True)

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--state-dir", default=".kafka", help="config, data, log and pid (default: .kafka)")
    parser.add_argument("--version", default=DEFAULT_VERSION, help="Kafka broker version from Maven Central")
    parser.add_argument("--partitions", type=int, default=3, help="default partitions of a new topic")
    args = parser.parse_args()
    state = Path(args.state_dir).absolute()
    try:
        if args.action == "start":
            start(state, args.version, args.partitions)
        else:
            stop(state)
    except BrokerError as exc:
        print(f"kafka_broker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
