"""Silver's preparation of free text, for an entity with a ``text:`` section (the chat scenario's
messages): what runs between the parse (lakehouse.parse) and the suite's row rules
(lakehouse.quality), so the rules judge, and silver keeps, the prepared text.

For each of ``text.columns``, in this order:
1. Unicode normalisation (NFC by default), with Arrow's ``utf8_normalize`` in a Python worker
   (Spark has no SQL function for it);
2. control characters (``\\p{Cc}`` other than tab and newline) removed, and the text trimmed of
   leading and trailing white space, so whitespace-only text is empty;
3. each ``text.mask`` pattern, in order, replaced by ``<NAME>``; ``masked_counts`` counts the
   matches per name over all the columns.
Then the ``derived`` columns (SQL over the prepared row), and, with ``text.dedupe``, the hash of
the text as matched (lower case, runs of white space as one space) in ``<column>_hash``.

The raw record a quarantined row keeps, and rescued fields, are masked with the same patterns
(:func:`masked`), so unmasked text never leaves bronze. :func:`mark_text_duplicates` quarantines
exact duplicates (``duplicate_text``) once the batch is decided (lakehouse/refine.py).
Next stop for a record: the row rules, then silver.<entity> or its quarantine.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from lakehouse.config import EntityConfig
from lakehouse.parse import Stage
from lakehouse.quarantine import is_kept
from lakehouse.silver_tables import SPARK_TYPES, newest_of_its_key

# C0 and C1 control characters except tab and newline (Java regex, as Spark runs it).
CONTROL = r"[\p{Cc}&&[^\t\n]]"
# White space at either end (\s alone is ASCII in Java; \p{Z} adds the Unicode spaces).
EDGE_SPACE = r"^[\s\p{Z}]+|[\s\p{Z}]+$"
INNER_SPACE = r"[\s\p{Z}]+"
DUPLICATE_TEXT = "duplicate_text"  # the quarantine reason


def prepare_stages(entity: EntityConfig) -> list[Stage]:
    """The stages that prepare a parsed batch's text (module doc); none for an entity without
    ``text:`` or ``derived:``."""
    stages: list[Stage] = []
    text = entity.text
    if text is not None:
        stages.append(("withColumns", {name: _cleaned(F.col(name), text.normalize, text.strip_control)
                                       for name in text.columns}))
        for mask_name, pattern in text.mask.items():
            # One stage per pattern, so its count sees the text the earlier patterns left.
            stages.append(("withColumns", {
                _count_column(mask_name): sum((F.regexp_count(F.col(c), F.lit(pattern)) for c in text.columns),
                                              F.lit(0)),
                **{c: F.regexp_replace(F.col(c), pattern, f"<{mask_name}>") for c in text.columns},
            }))
        if text.mask:
            counts = [item for name in text.mask for item in (F.lit(name), F.col(_count_column(name)).cast("long"))]
            # (The count columns go with the batch's final select, lakehouse/refine.py.)
            stages.append(("withColumns", {"masked_counts": F.when(_parsed(), F.create_map(*counts)),
                                           "_rescued": masked(F.col("_rescued"), entity)}))
    if entity.derived:
        stages.append(("withColumns", {name: F.expr(derived.sql).cast(SPARK_TYPES[derived.type])
                                       for name, derived in entity.derived.items()}))
    if text is not None and text.dedupe is not None:
        column = text.dedupe.column
        matched = matched_text(F.col(column))
        stages.append(("withColumns", {f"{column}_hash": F.when(
            F.char_length(matched) >= text.dedupe.min_chars, F.sha2(matched, 256))}))
    return stages


def matched_text(text: Column) -> Column:
    """Text as the dedupes compare it: lower case, each run of white space one space (silver
    has trimmed it). The exact dedupe hashes it; lakehouse/text_dedup.py shingles it."""
    return F.lower(F.regexp_replace(text, INNER_SPACE, " "))


def may_be_quarantined(entity: EntityConfig) -> Column:
    """Rows of a decided batch that keep their raw record: the quarantined ones, and where exact
    duplicates are looked for, the kept ones that may turn out duplicates
    (:func:`mark_text_duplicates`; lakehouse/refine.py drops the record from the rest afterwards)."""
    quarantined = F.size("_reasons") > 0
    if entity.text is None or entity.text.dedupe is None:
        return quarantined
    return quarantined | F.col(f"{entity.text.dedupe.column}_hash").isNotNull()


def masked(value: Column, entity: EntityConfig) -> Column:
    """``value`` (a raw record, or rescued fields as JSON) with every mask pattern of the entity
    replaced by its placeholder. A record with a backslash or a control character is masked as
    silver's text preparation would leave its strings (:func:`readable`), so PII written with
    JSON escapes (``ana\\u0040example.com``), split by control characters, or next to an escaped
    newline or emoji is masked in the quarantine as it is in silver; that record is kept as read
    (the escapes of characters written out, control characters removed)."""
    if entity.text is None:
        return value

    def masks(text: Column) -> Column:
        for name, pattern in entity.text.mask.items():
            text = F.regexp_replace(text, pattern, f"<{name}>")
        return text

    read = masks(readable(value))
    for stand_in, escape in KEPT_ESCAPES.items():
        read = F.regexp_replace(read, stand_in, escape)
    return F.when(value.rlike(NOT_PLAIN), read).otherwise(masks(value))


# A record the masks read through readable(): a backslash, or a control character (\p{Cc} but
# tab and newline, as one plain class: cheaper than CONTROL's intersection on every row).
NOT_PLAIN = r"[\\\u0000-\u0008\u000b-\u001f\u007f-\u009f]"
# The escapes that stay escaped: while the masks read a record, each is one control character
# (as a newline or a quote is, to a mask's edges), and Java replacement text afterwards.
PAIR = "\u0005"
KEPT_ESCAPES = {"\u0001": r"\\\\", "\u0002": r"\\n", "\u0003": r"\\t", "\u0004": r'\\"'}
# Escapes as read: control characters (those silver's preparation removes: all but tab and
# newline) removed; newline, tab and quote as their stand-ins; a UTF-16 surrogate pair as
# PAIR and its 8 digits (written out below), a surrogate alone as U+FFFD (silver has "?" there:
# to a mask, both are edges).
READ_ESCAPES = [
    (r"\\u00(?:0[0-8bBcCdDeEfF]|1[0-9a-fA-F]|7[fF]|[89][0-9a-fA-F])|\\[bfr]", ""),
    (r"\\n|\\u000[aA]", "\u0002"), (r"\\t|\\u0009", "\u0003"), (r'\\"|\\u0022', "\u0004"),
    (r"\\u005[cC]", "\u0001"), (r"\\/", "/"),
    (r"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})", PAIR + "$1$2"),
    (r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}", "\ufffd"),
]


def readable(value: Column) -> Column:
    """A raw record as its JSON strings read after silver's text preparation, in place: control
    characters removed (raw, and as escapes), every ``\\uXXXX`` escape written as its character
    (a surrogate pair as one), and the escapes that stay (backslash, newline, tab, quote) as
    the stand-ins of ``KEPT_ESCAPES``. The same for a line that is not JSON."""
    value = F.regexp_replace(F.regexp_replace(value, CONTROL, ""), r"\\\\", "\u0001")  # an escaped backslash
    for pattern, replacement in READ_ESCAPES:
        value = F.regexp_replace(value, pattern, replacement)

    def written_out(part: Column, index: Column) -> Column:
        return (F.when(F.startswith(part, F.lit(PAIR)),
                       F.concat(F.decode(F.unhex(F.substring(part, 2, 8)), "UTF-16BE"), F.substring(part, 10, 1 << 30)))
                .when(index == 0, part)
                .when(F.substring(part, 2, 4).rlike("^(?![dD][89a-fA-F])[0-9a-fA-F]{4}$"),  # never a surrogate
                      F.concat(F.decode(F.unhex(F.substring(part, 2, 4)), "UTF-16BE"), F.substring(part, 6, 1 << 30)))
                .otherwise(F.concat(F.lit("\\"), part)))

    # Each part after the first starts at a "u" that followed a backslash, or at PAIR.
    escaped = F.array_join(F.transform(F.split(value, f"\\\\(?=u)|(?={PAIR})"), written_out), "")
    return F.when(value.rlike(f"\\\\u|{PAIR}"), escaped).otherwise(value)


def silver_as_planned(spark, config, entity_name: str, plan: dict) -> DataFrame | None:
    """Silver as it was when the batch was first planned (None: there was no silver), so a batch
    redone after its MERGE committed does not see its own rows (a plan from before the version
    was recorded: the latest). What :func:`mark_text_duplicates` looks duplicates up in."""
    from lakehouse.tables import read_table, resolve_table, table_exists

    ref = resolve_table(config, f"silver.{entity_name}")
    if "silver_version" not in plan:
        return read_table(spark, ref) if table_exists(spark, ref) else None
    version = plan["silver_version"]
    return None if version is None else read_table(spark, ref, version=version)


def mark_text_duplicates(decided: DataFrame, entity: EntityConfig, silver: DataFrame | None) -> DataFrame:
    """Add ``duplicate_text`` to the reasons of each kept row whose text hash an earlier row has
    under another key: an earlier kept row of the batch (by event time, then bronze position),
    or a row already in ``silver`` (None: no silver yet). A row of the same key with the same text
    is a re-send, which the key's deduplication handles. Only the newest valid version of a key
    claims its text (``_claims``); an older version is superseded, and stays so even when the
    newest is a duplicate (nothing of that key enters silver from this batch, and its older text
    was never checked). A version no newer than the one ``silver`` holds for its key (a
    backfill) claims nothing either: silver's MERGE takes only a newer one. ``silver`` is read at
    the version the batch's plan recorded, so a redone batch decides as its first attempt did."""
    hash_column = f"{entity.text.dedupe.column}_hash"
    key = F.struct(*[F.col(k) for k in entity.keys])
    valid = is_kept()
    # The newest valid version of each key is the one silver would keep (only it competes for
    # silver, ``_claims``: lakehouse.silver_dedupe); only it claims its text, and only a text long enough to have a hash.
    stale = F.lit(False)
    if silver is not None:
        held = silver.select(F.struct(*[F.col(k) for k in entity.keys]).alias("_held_key"),
                             F.col(entity.event_time).alias("_held_time"))
        decided = decided.join(held, key == F.col("_held_key"), "left").drop("_held_key")
        stale = F.col("_held_time").isNotNull() & ~F.coalesce(F.col(entity.event_time) > F.col("_held_time"), F.lit(False))
    decided = decided.withColumn("_claims", newest_of_its_key(entity, among=valid) & ~stale).drop("_held_time")
    kept = F.col("_claims") & F.col(hash_column).isNotNull()
    # Rows that do not compete are partitions of their own (by bronze position), as in newest_of_its_key.
    partition = [kept, F.when(kept, F.col(hash_column)),
                 *[F.when(~kept, F.col(c)) for c in ("_source_file", "_source_line")]]
    order = [F.col(entity.event_time).asc_nulls_last(), F.col("_source_file"), F.col("_source_line")]
    first_key = F.first(key).over(Window.partitionBy(*partition).orderBy(*order))
    if silver is None:
        key_type = decided.select(key).schema[0].dataType
        joined = decided.withColumns({"_seen_low": F.lit(None).cast(key_type), "_seen_high": F.lit(None).cast(key_type)})
    else:
        seen = (silver.where(F.col(hash_column).isNotNull())
                .groupBy(F.col(hash_column).alias("_seen_hash"))
                .agg(F.min(key).alias("_seen_low"), F.max(key).alias("_seen_high")))
        joined = decided.join(seen, decided[hash_column] == seen["_seen_hash"], "left")
    earlier = (F.col("_seen_low").isNotNull() & ((F.col("_seen_low") != key) | (F.col("_seen_high") != key))) \
        | (first_key != key)
    duplicate = kept & F.coalesce(earlier, F.lit(False))
    return joined.withColumn("_reasons", F.when(duplicate, F.concat(F.col("_reasons"), F.array(F.lit(DUPLICATE_TEXT))))
                             .otherwise(F.col("_reasons"))).drop("_seen_hash", "_seen_low", "_seen_high")


def _cleaned(value: Column, form: str, strip_control: bool) -> Column:
    if form != "none":
        value = _normalizer(form)(value)
    if strip_control:
        value = F.regexp_replace(value, CONTROL, "")
    return F.regexp_replace(value, EDGE_SPACE, "")


def _normalizer(form: str):
    """A vectorised UDF: the strings in Unicode normal form ``form`` (Arrow's utf8_normalize)."""
    import pyarrow.compute as pc

    @F.arrow_udf("string")
    def normalize(values):
        return pc.utf8_normalize(values, form=form)

    return normalize


def _count_column(name: str) -> str:
    return f"_masked_{name}"


def _parsed() -> Column:
    """Rows the parse gave fields (a malformed line has no text to count in)."""
    return ~F.col("_malformed")
