"""Silver: typed, validated records parsed from bronze rows.

This module holds the pure DataFrame steps (usable on batch input and inside ``foreachBatch``).
A bronze row becomes one parsed row with:
  - the entity's declared columns, typed (``try_cast``: a value of the wrong type becomes null);
  - ``_malformed``: the line is not a JSON object at all;
  - ``_type_errors``: declared fields present in the line whose value has the wrong type;
  - ``_rescued``: fields the entity does not declare, as a JSON object (null when none).
Next stop: row rules (lakehouse.quality), then silver.<entity> or its quarantine table.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import MapType, StringType

from lakehouse.config import EntityConfig

RAW_FIELDS = "_raw_fields"


def parse_records(bronze: DataFrame, entity: EntityConfig) -> DataFrame:
    """Parse ``value`` (one JSON object per line) into the entity's typed columns."""
    raw = F.col(RAW_FIELDS)
    declared = list(entity.columns)
    parsed = bronze.withColumn(RAW_FIELDS, F.from_json("value", MapType(StringType(), StringType())))
    typed = {name: F.expr(f"try_cast(`{RAW_FIELDS}`['{name}'] AS {kind})") for name, kind in entity.columns.items()}
    type_errors = F.filter(
        F.array(*[F.when(raw[name].isNotNull() & typed[name].isNull(), F.lit(name)) for name in declared]),
        lambda name: name.isNotNull(),
    )
    extra = F.map_filter(raw, lambda key, _: ~key.isin(declared))
    return parsed.select(
        *bronze.columns,
        *[typed[name].alias(name) for name in declared],
        raw.isNull().alias("_malformed"),
        F.when(raw.isNull(), F.array().cast("array<string>")).otherwise(type_errors).alias("_type_errors"),
        F.when(F.size(extra) > 0, F.to_json(extra)).alias("_rescued"),
    )
