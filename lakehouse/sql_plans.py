"""Reading Spark's parsed (unresolved) plans of SQL statements, through the JVM: which relations a
query reads (gold SQL checks, lakehouse/preflight.py), and whether a statement is more than a
query (``lakehouse sql`` is read-only by default). Judged by the plan Spark's own parser builds,
not by keywords, so comments, CTEs and odd spacing change nothing.
"""

from __future__ import annotations

from pyspark.sql import SparkSession


def _java_message(exc: Exception) -> str:
    java = getattr(exc, "java_exception", None)
    message = java.getMessage() if java is not None else str(exc)
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _scala_list(seq) -> list:
    items, iterator = [], seq.iterator()
    while iterator.hasNext():
        items.append(iterator.next())
    return items


def parsed_plan(spark: SparkSession, sql: str):
    """Spark's parsed (unresolved) logical plan of one statement; raises ValueError with Spark's
    message when it does not parse."""
    from py4j.protocol import Py4JJavaError

    try:
        return spark._jsparkSession.sessionState().sqlParser().parsePlan(sql)
    except Py4JJavaError as exc:
        raise ValueError(_java_message(exc)) from None


def plan_nodes(plan) -> list:
    """Every node of a parsed plan: children, CTE definitions and subqueries in expressions."""
    nodes, stack = [], [plan]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack += _scala_list(node.children()) + _scala_list(node.innerChildren()) + _scala_list(node.subqueries())
    return nodes


def _node_kind(node) -> str:
    return node.getClass().getSimpleName()


def relations_read(plan) -> tuple[set[str], set[str]]:
    """(names of the relations a parsed query reads, names its CTEs define), lower case."""
    read, defined = set(), set()
    for node in plan_nodes(plan):
        kind = _node_kind(node)
        if kind == "UnresolvedRelation":
            read.add(".".join(_scala_list(node.multipartIdentifier())).lower())
        elif kind == "UnresolvedWith":
            defined |= {str(pair._1()).lower() for pair in _scala_list(node.cteRelations())}
    return read, defined


# Plan nodes that only read: DESCRIBE ..., SHOW ..., EXPLAIN ... (commands, but they change nothing).
_READ_ONLY_COMMANDS = ("Describe", "Show", "Explain")


def writing_node(spark: SparkSession, plan) -> str | None:
    """The kind of the first node of a parsed plan that changes a table, the catalog or the
    session (a command or a parsed write statement), or None for a query."""
    command = spark._jvm.java.lang.Class.forName(
        "org.apache.spark.sql.catalyst.plans.logical.Command", False,
        spark._jvm.java.lang.Thread.currentThread().getContextClassLoader())
    for node in plan_nodes(plan):
        kind = _node_kind(node)
        if kind.startswith(_READ_ONLY_COMMANDS):
            continue
        if command.isInstance(node) or kind.endswith("Statement"):  # InsertIntoStatement, RestoreTableStatement
            return kind
    return None
