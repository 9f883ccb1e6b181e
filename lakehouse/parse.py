"""Parsing bronze records into an entity's typed columns (the first step of silver).

A bronze row becomes one parsed row (a JSON-lines source: one JSON object per line; a CSV
source: fields by position, in the declared column order) with:
  - the entity's declared columns, typed (``try_cast``: a value of the wrong type becomes null;
    so does a timestamp or date outside the years 1900-9999);
  - ``_malformed``: the line is not a JSON object at all (CSV: blank, or too few fields);
  - ``_too_large``: the line is longer than the entity's ``max_record_bytes`` (not parsed);
  - ``_duplicate_field``: a JSON object names a field twice (which value is meant is unknowable);
  - ``_type_errors``: declared fields present in the line whose value has the wrong type;
  - ``_non_finite``: double fields holding NaN or +-Infinity (``1e400`` and a bare ``NaN``
    token included), except those the entity allows;
  - ``_rescued``: fields the entity does not declare, as a JSON object (null when none).
Before parsing, a byte-order mark at the start of a record is dropped (it marks the file's
encoding, it is not part of the first record), and so is the "\\r" that ends a CSV line of a
file with Windows line ends.
Next stop: silver's row decisions (lakehouse.silver).
"""

from __future__ import annotations

import re

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, MapType, StringType, StructType

from lakehouse.config import EntityConfig, SourceConfig
from lakehouse.quality import names_where

RAW_FIELDS = "_raw_fields"
SOURCE_COLUMN = "_source"  # which bronze table a row came from, when an entity reads several
CSV_EXTRA_FIELDS = 16  # CSV fields past the declared ones kept in _rescued as _c<position>
BYTE_ORDER_MARK = "\ufeff"

# Timestamps silver accepts: Spark represents years 1 to 294247, but nothing downstream (Python,
# pandas, most readers) goes past 9999, and a reading from before 1900 is a broken clock.
TIMESTAMP_RANGE_MICROS = (-2_208_988_800_000_000, 253_402_300_800_000_000)  # [1900-01-01, 10000-01-01)
# How from_json hands over a bare NaN / Infinity token (and a number beyond double range).
_QUOTED_SPECIALS = {'"NaN"': "NaN", '"Infinity"': "Infinity", '"-Infinity"': "-Infinity"}


def bronze_records(bronze: DataFrame, source: SourceConfig) -> DataFrame:
    """Bronze rows of any source kind as records: ``value`` text and where it came from.

    A file source's row is a line's bytes with its file and line number; a Kafka message's
    value bytes with ``kafka://<topic>/<partition>`` and its offset in their place, so silver
    and its quarantine say where any record came from. The bytes become the text unchanged
    (bytes that are not UTF-8 are quarantined as ``not_utf8``). (Two versions of a key with
    equal event times are told apart by that position, compared as text: a deterministic
    choice, not an arrival order across partitions or sources.)
    """
    if source.kind == "kafka":
        return bronze.select(
            F.col("value").cast("string").alias("value"),
            F.concat(F.lit("kafka://"), F.col("topic"), F.lit("/"), F.col("partition").cast("string")).alias("_source_file"),
            F.col("offset").alias("_source_line"),
            "_ingested_at",
        )
    return bronze.select(F.col("value").cast("string").alias("value"), "_source_file", "_source_line", "_ingested_at")


# One step of building a DataFrame from column expressions made once (see :func:`apply_stages`).
Stage = tuple[str, object]  # ("withColumns", {name: Column}) or ("select", [Column | name, ...])


def apply_stages(df: DataFrame, stages: list[Stage]) -> DataFrame:
    """``df`` through ``stages``: a few calls to Spark for expressions built once. Building them
    (thousands of calls from Python to the JVM for parse, rules and reasons) took about half a
    second a micro-batch, so a query builds them as it starts and keeps them
    (lakehouse.refine.prepare_decisions, decide_rows)."""
    for kind, columns in stages:
        df = df.withColumns(columns) if kind == "withColumns" else df.select(*columns)
    return df


def parse_records(
    bronze: DataFrame, entity: EntityConfig, sources: dict[str, SourceConfig] | None = None
) -> DataFrame:
    """Parse ``value`` into the entity's typed columns, by each source's format.

    ``sources`` maps the entity's source names to their configs (default: one JSON-lines
    source). With more than one, each row names its source in ``_source``. Besides the typed
    columns, every row gets the flags of the module docstring and ``_header``: null for a
    record, "ok" for a CSV header line that names the declared columns (skipped, not a
    record), "mismatch" for one that does not (quarantined).
    """
    return apply_stages(bronze, parse_stages(bronze.schema, entity, sources))


def parse_stages(schema: StructType, entity: EntityConfig, sources: dict[str, SourceConfig] | None = None) \
        -> list[Stage]:
    """:func:`parse_records` as stages, for bronze rows of ``schema``."""
    stages: list[Stage] = []
    if isinstance(schema["value"].dataType, BinaryType):  # bronze's raw bytes, handed in directly
        stages.append(("withColumns", {"value": F.col("value").cast("string")}))
    declared = list(entity.columns)
    # A record over the size limit is not parsed at all (a poison message may be megabytes).
    size_ok = F.coalesce(F.octet_length("value") <= entity.max_record_bytes, F.lit(True))
    value = F.col("value")
    text = F.when(size_ok, F.when(value.startswith(BYTE_ORDER_MARK), F.substring(value, 2, 1 << 30)).otherwise(value))
    sources = sources or {"": None}
    # Sources that share a format share one parse (files and Kafka feeds of the same JSON lines).
    parse_of = {name: _format_key(source) for name, source in sources.items()}
    parses = {parse_of[name]: _raw_fields(source, declared, text) for name, source in sources.items()}
    if len(parses) == 1:
        raw_map, malformed, header, duplicate = next(iter(parses.values()))
    else:  # each of the four picked by the row's source
        raw_map, malformed, header, duplicate = (
            _by_source({name: parses[parse_of[name]][i] for name in sources}) for i in range(4))
    # A null value (a Kafka tombstone) is malformed whatever the format.
    malformed = F.coalesce(malformed, value.isNull()) & size_ok

    raw = F.col(RAW_FIELDS)
    typed = {name: _typed(raw[name], kind) for name, kind in entity.columns.items()}
    type_errors = names_where([(raw[name].isNotNull() & typed[name].isNull(), name) for name in declared])
    checked_finite = [n for n, kind in entity.columns.items() if kind == "double" and n not in entity.allow_non_finite]
    non_finite = names_where([(F.isnan(F.col(n)) | (F.abs(F.col(n)) == float("inf")), n) for n in checked_finite])
    # Unexpected fields: found with array_except (generated code); the map of them is built, with
    # a lambda, only for the rare rows that have any.
    extra_keys = F.array_except(F.map_keys(raw), F.array(*[F.lit(name) for name in declared]))
    extra = F.when(F.size(extra_keys) > 0, F.to_json(F.map_filter(raw, lambda key, _: ~key.isin(declared))))
    stages.append(("withColumns", {RAW_FIELDS: raw_map, "_malformed": malformed, "_header": header,
                                   "_duplicate_field": F.coalesce(duplicate, F.lit(False))}))
    no_names = F.array().cast("array<string>")
    stages.append(("select", [
        *schema.fieldNames(),
        *[typed[name].alias(name) for name in declared],
        F.col("_malformed"),
        (~size_ok).alias("_too_large"),
        F.col("_duplicate_field"),
        F.when(F.col("_malformed"), no_names).otherwise(type_errors).alias("_type_errors"),
        extra.alias("_rescued"),
        F.col("_header"),
    ]))
    stages.append(("withColumns", {"_non_finite": non_finite}))
    return stages


def record_event_time(value: Column, entity: EntityConfig, source: SourceConfig) -> Column:
    """The entity's event time read from a raw record (``value``, text) alone, typed, or null.

    Cheaper than :func:`parse_records` (one field, no checks): for measuring how old records
    are (lakehouse/freshness.py), never for deciding about them."""
    name = entity.event_time
    if source.format == "json-lines":
        raw = F.get_json_object(value, f"$.{name}")  # event_time is an identifier: a plain path
    else:
        schema = ", ".join(f"`{column}` STRING" for column in entity.columns)
        raw = F.from_csv(value, schema, {"sep": source.csv.delimiter})[name]
    return _typed(raw, entity.columns[name])


def _typed(raw: Column, kind: str) -> Column:
    """The raw text of a field as the declared type; null when it is not one."""
    if kind == "double":
        raw = F.when(raw.isin(*_QUOTED_SPECIALS), F.regexp_replace(raw, '"', "")).otherwise(raw)
    value = raw.try_cast(kind)
    if kind in ("timestamp", "date"):
        micros = F.unix_micros(value.cast("timestamp"))
        low, high = TIMESTAMP_RANGE_MICROS
        value = F.when((micros >= low) & (micros < high), value)
    return value


def _by_source(columns: dict[str, Column]) -> Column:
    """CASE _source WHEN name THEN column ... END."""
    chosen = None
    for name, column in columns.items():
        condition = F.col(SOURCE_COLUMN) == name
        chosen = F.when(condition, column) if chosen is None else chosen.when(condition, column)
    return chosen


def _format_key(source: SourceConfig | None) -> tuple:
    if source is None or source.format == "json-lines":
        return ("json-lines",)
    return (source.format, source.csv.header, source.csv.delimiter)


def _raw_fields(source: SourceConfig | None, declared: list[str], value: Column) -> tuple[Column, Column, Column, Column]:
    """(field name -> raw text map, malformed flag, header state, duplicate-field flag) for one
    source's lines (``value``)."""
    no_header = F.lit(None).cast("string")
    if source is None or source.format == "json-lines":
        fields = F.from_json(value, MapType(StringType(), StringType()))
        # from_json keeps both entries of a key named twice (a lookup finds the first): fewer
        # distinct keys than entries. (tests/lakehouse/test_parse.py pins this behaviour down.)
        keys = F.map_keys(fields)
        duplicate = F.when(fields.isNotNull(), F.size(F.array_distinct(keys)) < F.size(keys))
        return F.when(fields.isNotNull(), fields), fields.isNull(), no_header, duplicate
    # A file with Windows line ends leaves "\r" at the end of each line (bronze keeps it).
    value = F.regexp_replace(value, r"\r\z", "")
    # CSV: fields by position; an empty field is a missing value; fields past the declared ones
    # are unexpected fields named _c<position> (0-based, as Spark names unnamed CSV columns).
    delimiter = source.csv.delimiter
    names = declared + [f"_c{i}" for i in range(len(declared), len(declared) + CSV_EXTRA_FIELDS)]
    schema = ", ".join(f"`{name}` STRING" for name in names)
    record = F.from_csv(value, schema, {"sep": delimiter})
    fields = F.map_filter(
        F.map_from_arrays(F.array(*[F.lit(n) for n in names]), F.array(*[record[n] for n in names])),
        lambda _, text: text.isNotNull(),
    )
    # Fields counted outside quoted sections, so a quoted delimiter does not count.
    unquoted = F.regexp_replace(value, r'"(?:[^"]|"")*"', "")
    split_pattern = re.escape(delimiter)  # F.split takes a (Java) regular expression
    field_count = F.size(F.split(unquoted, split_pattern, -1))
    malformed = (F.trim(value) == "") | (field_count < len(declared))
    header = no_header
    if source.csv.header:
        names_in_line = F.transform(F.split(value, split_pattern, -1),
                                    lambda name: F.lower(F.trim(F.regexp_replace(name, '"', ""))))
        matches = names_in_line == F.array(*[F.lit(n.lower()) for n in declared])
        header = F.when(F.col("_source_line") == 1, F.when(matches, "ok").otherwise("mismatch"))
    is_header = header.isNotNull()
    return F.when(~is_header, fields), F.when(is_header, False).otherwise(malformed), header, F.lit(False)
