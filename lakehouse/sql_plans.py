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
    return "\n".join(line.rstrip() for line in str(message).splitlines() if line.strip())


def _scala_list(seq) -> list:
    items, iterator = [], seq.iterator()
    while iterator.hasNext():
        items.append(iterator.next())
    return items


def parsed_plan(spark: SparkSession, sql: str):
    """Spark's parsed (unresolved) logical plan of one statement; raises ValueError with Spark's
    message when it does not parse."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        return spark._jsparkSession.sessionState().sqlParser().parsePlan(sql)
    except (Py4JJavaError, PySparkException) as exc:  # pyspark turns a ParseException into its own
        raise ValueError(_java_message(exc)) from None


def parsed_expression(spark: SparkSession, sql: str):
    """Spark's parsed (unresolved) expression; ValueError with Spark's message when it does not parse."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        return spark._jsparkSession.sessionState().sqlParser().parseExpression(sql)
    except (Py4JJavaError, PySparkException) as exc:
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


# The nodes of a parsed query: relational operators Spark's parser makes for SELECT, WITH,
# VALUES, set operations, joins, windows, hints. A statement any of whose nodes is not one of
# these (DELETE, INSERT, INSERT OVERWRITE DIRECTORY, MERGE, ALTER, DROP, CALL, EXECUTE IMMEDIATE,
# SET, TRANSFORM ... USING a script, a Delta OPTIMIZE or VACUUM, ...) is not a query.
QUERY_NODES = frozenset({
    "Project", "Filter", "Aggregate", "Join", "LateralJoin", "Union", "Intersect", "Except", "Distinct",
    "Sort", "GlobalLimit", "LocalLimit", "Offset", "Tail", "SubqueryAlias", "UnresolvedRelation",
    "UnresolvedWith", "CTERelationDef", "CTERelationRef", "OneRowRelation", "LocalRelation",
    "UnresolvedInlineTable", "Generate", "Window", "WithWindowDefinition", "Pivot", "Unpivot", "Sample",
    "Expand", "UnresolvedHint", "UnresolvedHaving", "UnresolvedSubqueryColumnAliases", "Deduplicate",
    "RepartitionByExpression", "Repartition", "RebalancePartitions", "UnresolvedTableValuedFunction",
    "UnresolvedTVFAliases", "NaturalJoin", "UsingJoin", "UnresolvedAlias", "Range",
})
# Statements that only read or describe: DESCRIBE ..., SHOW ..., EXPLAIN ... (EXPLAIN runs nothing).
_READ_ONLY_STATEMENTS = ("Describe", "Show", "Explain")


def writing_node(plan) -> str | None:
    """None when a parsed plan is a query (or DESCRIBE / SHOW / EXPLAIN); else the kind of its
    first node that is not part of a query."""
    if _node_kind(plan).startswith(_READ_ONLY_STATEMENTS):
        return None
    for node in plan_nodes(plan):
        if _node_kind(node) not in QUERY_NODES:
            return _node_kind(node)
    return None
