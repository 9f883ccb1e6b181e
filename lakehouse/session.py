"""The one Spark session factory: Delta configured, master and settings from config.

Under ``spark-submit`` or on Databricks the cluster already fixed the master and the jars, so
the factory reuses (or creates) the session they set up and only adds what it may.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from contextlib import nullcontext
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from xml.sax.saxutils import quoteattr

from pyspark.sql import DataFrame, SparkSession

from lakehouse.config import LakehouseConfig
from lakehouse.errors import JobError
from lakehouse.fs import one_at_a_time, user_cache
from lakehouse.jvm_output import launch_gateway, verbose
from lakehouse.local_fs import jdk_tool, local_fs_jar_state, local_fs_settings
from lakehouse.redaction import SPARK_REDACTION_REGEX

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
SCALA_BINARY_VERSION = "2.13"
# A new Delta table gets delta.<key> from the session setting SESSION_DEFAULTS + <key> (lakehouse/table_create.py).
SESSION_DEFAULTS = "spark.databricks.delta.properties.defaults."


class SessionError(JobError):
    """The session cannot do what the project needs (e.g. Delta's jar is not on the classpath)."""


def delta_maven_coordinate() -> str:
    """The Delta jar matching the installed pyspark and delta-spark, e.g. ``io.delta:delta-spark_4.1_2.13:4.4.0``."""
    spark_minor = ".".join(version("pyspark").split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_{SCALA_BINARY_VERSION}:{version('delta-spark')}"


def kafka_maven_coordinate() -> str:
    """Spark's Kafka connector for the installed pyspark, e.g. ``org.apache.spark:spark-sql-kafka-0-10_2.13:4.1.1``."""
    return f"org.apache.spark:spark-sql-kafka-0-10_{SCALA_BINARY_VERSION}:{version('pyspark')}"


def spark_packages(config: LakehouseConfig) -> list[str]:
    """Maven coordinates the jobs need: Delta's jar, Spark's Kafka connector when a source is a
    Kafka source, and any configured in ``spark.packages``."""
    kafka = [kafka_maven_coordinate()] if any(s.kind == "kafka" for s in config.sources.values()) else []
    return [delta_maven_coordinate(), *kafka, *config.spark.packages]


def _jars_record(packages: list[str], config: LakehouseConfig) -> Path:
    """Where the jars that resolving ``packages`` gave are listed (one file per set of packages
    and Ivy settings, in the user's cache directory)."""
    ivy = [config.spark.conf.get(key, "") for key in ("spark.jars.ivy", "spark.jars.ivySettings", "spark.jars.repositories")]
    key = hashlib.sha256("\n".join([*packages, *ivy]).encode()).hexdigest()[:16]
    return user_cache(f"jars-{key}.txt")


def resolved_jars(packages: list[str], config: LakehouseConfig) -> list[str] | None:
    """The jar files an earlier session resolved ``packages`` to, when every one is still there."""
    try:
        jars = _jars_record(packages, config).read_text().split()
    except OSError:
        return None
    local = [jar.removeprefix("file://").removeprefix("file:") for jar in jars]
    return jars if jars and all(Path(path).is_file() for path in local) else None


def remember_jars(spark: SparkSession, packages: list[str], config: LakehouseConfig) -> None:
    """Record the jars Ivy resolved ``packages`` to (spark.jars after resolution); best effort."""
    resolved = [jar for jar in spark.sparkContext.getConf().get("spark.jars", "").split(",") if jar]
    wanted = {coordinate.split(":")[1] for coordinate in packages}  # artifact ids
    if not resolved or not all(any(f"_{artifact}-" in jar for jar in resolved) for artifact in wanted):
        return
    record = _jars_record(packages, config)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        temporary = record.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text("\n".join(resolved) + "\n")
        os.replace(temporary, record)
    except OSError:
        pass


def _one_resolution_at_a_time():
    """This user's Ivy lock, held while a session resolves packages. Two processes resolving into
    one Ivy cache at once (two jobs started together on a fresh machine, a parallel test run) can
    write the same download at once and leave a broken jar: Ivy does not lock its cache. The
    second then finds the jars the first recorded (:func:`resolved_jars`)."""
    return one_at_a_time(user_cache("ivy-resolution.lock"), "waiting for another process resolving Spark's packages")


def running_on_cluster_launcher() -> bool:
    """True under spark-submit (it starts the JVM before Python) or on Databricks."""
    return "PYSPARK_GATEWAY_PORT" in os.environ or "DATABRICKS_RUNTIME_VERSION" in os.environ


LOOPBACK = "127.0.0.1"


def loopback_interface() -> str:
    """The loopback network interface's name (``lo`` on Linux, ``lo0`` on macOS)."""
    import socket

    return next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")


def session_settings(config: LakehouseConfig, ui: bool = False, launched: bool = False) -> dict[str, str]:
    """Every setting a job's session gets, in order (later ones win), secrets from the environment.

    ``ui``: start Spark's web UI (continuous jobs); batch jobs run without one unless
    ``spark.ui.enabled`` is configured. A local master (or none: pyspark's local[*]) listens on
    the loopback only (driver, block manager, UI) unless ``spark.conf`` says otherwise.
    ``launched``: under spark-submit or on Databricks, where the launcher fixed the JVM, the
    master and the jars."""
    settings = {"spark.redaction.regex": SPARK_REDACTION_REGEX}
    if not launched:
        settings["spark.ui.enabled"] = str(ui).lower()
        if (config.spark.master or "local").startswith("local"):
            settings.update({"spark.driver.host": LOOPBACK, "spark.driver.bindAddress": LOOPBACK,
                             # torch.distributed's Gloo (TorchDistributor) in the Python workers
                             "spark.executorEnv.GLOO_SOCKET_IFNAME": loopback_interface()})
        # Resolved from Maven Central into the local Ivy cache on first use; later sessions take
        # the jars that resolution gave (no Ivy run, no page of its output on every command).
        packages = spark_packages(config)
        jars = resolved_jars(packages, config)
        if jars is not None:
            settings["spark.jars"] = ",".join(j for j in [config.spark.conf.get("spark.jars", ""), *jars] if j)
        else:
            settings["spark.jars.packages"] = ",".join(packages)
        pools = scheduler_pools_file(config)
        if pools is not None:
            settings["spark.scheduler.allocation.file"] = pools
        if config.catalog.kind == "path":
            settings["spark.sql.warehouse.dir"] = str((config.storage.data_dir / "spark-warehouse").absolute())
    settings.update({"spark.sql.extensions": DELTA_EXTENSION, "spark.sql.catalog.spark_catalog": DELTA_CATALOG})
    # Every table this session creates starts with maintenance's retention settings (lakehouse/maintenance.py).
    settings.update({SESSION_DEFAULTS + key.removeprefix("delta."): value
                     for key, value in config.maintenance.table_properties().items()})
    settings.update({k: v for k, v in config.spark.conf.items() if not (k == "spark.jars" and "spark.jars" in settings)})
    settings.update({key: os.environ[variable] for key, variable in config.spark.conf_env.items()})
    if not launched:  # the driver JVM this process starts
        settings = local_fs_settings(settings.get("spark.master") or config.spark.master or "local", settings)
        settings[DRIVER_OPTIONS] = with_class_archive(settings.get(DRIVER_OPTIONS, ""))
    return settings


DRIVER_OPTIONS = "spark.driver.extraJavaOptions"
CDS_QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"  # no warning when the JVM finds the archive stale
# Options by which the configuration chooses about class sharing itself.
CDS_CHOSEN_ALREADY = ("-Xshare", "-XX:SharedArchiveFile", "-XX:ArchiveClassesAtExit", "-XX:-UseSharedSpaces",
                      "-XX:SharedClassListFile", "-XX:DumpLoadedClassList")


def class_archive() -> Path:
    """Where this environment's driver class archive is (lakehouse/jvm_archive.py makes it), in
    the user's cache directory: named by :func:`class_archive_sources`, so a new Java build or
    a reinstalled pyspark names a new one."""
    key = hashlib.sha256("\n".join(class_archive_sources()).encode()).hexdigest()[:16]
    return user_cache("jvm", f"driver-{key}.jsa")


def class_archive_sources() -> list[str]:
    """What a class archive is made for: the Java installation (its path and its build, from its
    ``release`` file), pyspark's folder (its jars are the JVM's class path, which the archive must
    match) with the time its jars were installed, the pyspark and Delta versions, and the
    local file system's jar (lakehouse/local_fs.py: first on that class path, when made)."""
    java = Path(os.path.realpath(jdk_tool("java") or "java"))
    release = java.parent.parent / "release"
    build = release.read_text(errors="replace") if release.is_file() else ""
    pyspark_dir = Path(find_spec("pyspark").origin).parent
    jars = pyspark_dir / "jars"
    installed = str(jars.stat().st_mtime_ns) if jars.is_dir() else ""
    return [str(java), str(pyspark_dir), version("pyspark"), version("delta-spark"), installed,
            hashlib.sha256(build.encode()).hexdigest()[:16], local_fs_jar_state()]


def with_class_archive(options: str) -> str:
    """The driver's JVM options, with ``-XX:SharedArchiveFile`` when the class archive exists.
    The JVM checks the archive itself (its Java build, its class path, each jar's size and time)
    and runs without it where it does not match, silently (:data:`CDS_QUIET`): a stale archive
    costs the saving, never a failure. Left as they are: options that choose about class sharing
    themselves (:data:`CDS_CHOSEN_ALREADY`), and an archive path with a space (Spark splits the
    options on spaces)."""
    try:
        archive = class_archive()
    except OSError:  # the Java or pyspark installation unreadable: no archive, the job still starts
        return options
    chosen = any(token.startswith(CDS_CHOSEN_ALREADY) for token in options.split())
    if chosen or not archive.is_file() or any(c.isspace() for c in str(archive)):
        return options
    return f"{options} -XX:SharedArchiveFile={archive} {CDS_QUIET}".strip()


MAINTENANCE_POOL = "maintenance"  # `lakehouse run`'s scheduler pool for table maintenance (lakehouse/app.py)
FLOW_POOL_WEIGHT = 4  # a flow's pool against maintenance's (weight 1)


def scheduler_pools_file(config: LakehouseConfig) -> str | None:
    """Spark's FAIR scheduler pools for `lakehouse run` (spark.scheduler.allocation.file): one per
    flow (the pool lakehouse/app.py runs the flow's queries in), each of weight FLOW_POOL_WEIGHT,
    and maintenance's of weight 1. Spark gives a free core to the pool with the fewest running
    tasks per weight: maintenance still gets a core when it has none running, but never a second
    while a flow with a task running waits. Written in the user's cache directory, named by its
    contents; None when it cannot be written (every pool then weighs the same)."""
    from lakehouse.pipeline import Pipeline  # the flows of the configuration

    pools = [(flow_id, FLOW_POOL_WEIGHT) for flow_id in Pipeline(config).flows] + [(MAINTENANCE_POOL, 1)]
    xml = "<?xml version=\"1.0\"?>\n<allocations>\n" + "".join(
        f"  <pool name={quoteattr(name)}><schedulingMode>FIFO</schedulingMode><weight>{weight}</weight>"
        "<minShare>0</minShare></pool>\n" for name, weight in pools) + "</allocations>\n"
    cache = user_cache()
    path = cache / f"pools-{hashlib.sha256(xml.encode()).hexdigest()[:16]}.xml"
    try:
        if not path.exists():
            cache.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}")
            temporary.write_text(xml)
            os.replace(temporary, path)
    except OSError:
        return None
    return str(path)


def build_session(config: LakehouseConfig, app_name: str | None = None, ui: bool = False) -> SparkSession:
    """The session for a job, with :func:`session_settings`. A session that must resolve its
    packages with Ivy waits for any other process of this user doing so (:func:`_one_resolution_at_a_time`)."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active

    launched = running_on_cluster_launcher()
    resolving = not launched and resolved_jars(spark_packages(config), config) is None
    with _one_resolution_at_a_time() if resolving else nullcontext():
        return _new_session(config, app_name, ui, launched)


def _new_session(config: LakehouseConfig, app_name: str | None, ui: bool, launched: bool) -> SparkSession:
    builder = SparkSession.builder.appName(app_name or config.spark.app_name)
    settings = session_settings(config, ui, launched)  # a resolution that ran meanwhile gave the jars
    if not launched:
        if settings.get("spark.driver.bindAddress") == LOOPBACK:
            # The UI binds to $SPARK_LOCAL_IP (all interfaces when unset), read when the JVM starts.
            os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
        if config.spark.master:
            builder = builder.master(config.spark.master)
        # Python tasks (training processes among them) run in this interpreter's environment,
        # not whatever `python3` is first on PATH (pyspark reads the variable when it starts).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in settings.items():
        builder = builder.config(key, value)
    if not launched and not verbose():
        _start_quiet_jvm(builder)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN" if verbose() else "ERROR")
    quiet_expected_warnings(spark)
    if not launched and "spark.jars.packages" in settings:
        remember_jars(spark, spark_packages(config), config)
    if launched and not _delta_on_classpath(spark):
        raise SessionError(
            "Delta Lake's jar is not on the classpath: add "
            f"'--packages {','.join(spark_packages(config))}' to spark-submit"
        )
    return spark


def _start_quiet_jvm(builder) -> None:
    """Start the JVM, with the builder's settings, with its output filtered (lakehouse/jvm_output.py);
    the session the builder then makes uses it."""
    from pyspark import SparkConf, SparkContext

    if SparkContext._gateway is not None:  # a JVM is up already (an earlier session's)
        return
    conf = SparkConf(loadDefaults=False)
    for key, value in builder._options.items():
        conf.set(key, value)
    SparkContext._ensure_initialized(gateway=launch_gateway(conf), conf=conf)


def _delta_on_classpath(spark: SparkSession) -> bool:
    return class_on_classpath(spark, DELTA_EXTENSION)


KAFKA_PROVIDER = "org.apache.spark.sql.kafka010.KafkaSourceProvider"


def require_kafka_connector(spark: SparkSession) -> None:
    """Fail with the spark-submit option to add when Spark's Kafka connector is missing."""
    if not class_on_classpath(spark, KAFKA_PROVIDER):
        raise SessionError(
            "Spark's Kafka connector is not on the classpath: add "
            f"'--packages {delta_maven_coordinate()},{kafka_maven_coordinate()}' to spark-submit"
        )


def class_on_classpath(spark: SparkSession, name: str) -> bool:
    try:
        jvm = spark.sparkContext._jvm
        return bool(jvm.org.apache.spark.util.Utils.classIsLoadable(name))
    except Exception:  # Spark Connect (no JVM handle) or an API change: assume the cluster has it
        return True


def start_job_session(config: LakehouseConfig, ui: bool = False) -> SparkSession:
    """A command's session, announced on stderr (stdout stays the command's output: sql --json,
    status --json). ``ui``: with Spark's web UI (a continuous job; on the loopback locally)."""
    master = "the launcher's master" if running_on_cluster_launcher() else config.spark.master or "default master"
    print(f"starting Spark ({master}, env {config.env}) ...", file=sys.stderr, flush=True)
    return build_session(config, ui=ui)


def quiet_expected_warnings(spark: SparkSession) -> None:
    """Spark warnings that every job (the always-on run most of all) meets as a matter of course,
    each with its own logger set to ERROR (nothing else is quieted):

    - FairSchedulableBuilder: a pool missing from the allocation file (under spark-submit or on
      Databricks, where the launcher fixed the settings; :func:`scheduler_pools_file` elsewhere)
      is made, with equal weight, when its first job arrives, and Spark warns once per pool that
      it "has not been configured", which is the intent here;
    - Shell: a stop that interrupts a batch which had just begun (it is redone on restart) logs
      Hadoop's interrupted file rename with a page of stack trace;
    - ProcessingTimeExecutor: "current batch is falling behind" on every batch longer than the
      trigger; the batch times are printed (and in ops.stream_progress) anyway;
    - MapPartitionsRDD: "was locally checkpointed ... cannot be recomputed after unpersisting"
      after every silver batch, when its staged rows (a local checkpoint) are released
      (:func:`release_checkpoint`), which nothing reads any more.
    """
    try:
        jvm = spark.sparkContext._jvm
        error = jvm.org.apache.logging.log4j.Level.ERROR
        for logger in ("org.apache.spark.scheduler.FairSchedulableBuilder", "org.apache.hadoop.util.Shell",
                       "org.apache.spark.sql.execution.streaming.runtime.ProcessingTimeExecutor",  # Spark 4.1
                       "org.apache.spark.sql.execution.streaming.ProcessingTimeExecutor",  # Spark 3.5 (Databricks)
                       "org.apache.spark.rdd.MapPartitionsRDD"):
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(logger, error)
    except Exception:  # noqa: BLE001 - Spark Connect, or another logging backend: the warnings stay
        pass


# A local checkpoint's block gone (an executor lost after the rows were kept): a local checkpoint
# has no lineage to compute it again from, so the work that made it is redone.
LOST_CHECKPOINT_BLOCK = re.compile(r"Checkpoint block rdd_\d+_\d+ not found")



def redo_on_lost_checkpoint(work, attempts: int, what: str):
    """``work(attempt)`` (attempt 1, 2, ...), done again while it fails for a lost block of a
    local checkpoint it made (:data:`LOST_CHECKPOINT_BLOCK`), at most ``attempts`` times in
    all; its result. Any other failure, or the last, is raised. ``what`` is said before a redo."""
    for attempt in range(1, attempts + 1):
        try:
            return work(attempt)
        except Exception as exc:
            if attempt == attempts or not LOST_CHECKPOINT_BLOCK.search(str(exc)):
                raise
            print(f"{what}: kept rows lost (an executor went away); doing it again (attempt {attempt + 1} of "
                  f"{attempts})", file=sys.stderr, flush=True)

def release_checkpoint(frame: DataFrame, what: str) -> None:
    """Free the blocks of a local checkpoint (``frame.localCheckpoint()``) now rather than when
    Spark's cleaner finds them unreferenced (under Spark Connect, which has no handle on them,
    the server frees them with the DataFrame). Never raises: it runs after the work's own
    outcome, which must not be hidden; ``what`` names the rows in the one-line notice."""
    jdf = getattr(frame, "_jdf", None)
    try:
        plan = jdf.queryExecution().analyzed() if jdf is not None else None
        if plan is not None and plan.getClass().getSimpleName() == "LogicalRDD":
            plan.rdd().unpersist(False)
    except Exception as exc:  # noqa: BLE001 - a stopping context: the cleaner frees them, or nothing is left
        print(f"{what}: could not free its blocks ({type(exc).__name__}); Spark's cleaner will",
              file=sys.stderr, flush=True)
