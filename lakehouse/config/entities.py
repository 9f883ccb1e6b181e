"""The silver entity's section of the configuration (``entities.<name>``): its typed columns,
keys and limits, and how silver prepares its free text (lakehouse/text_prep.py).
lakehouse/config/schema.py holds the rest of the typed configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from lakehouse.config.values import Duration, Identifier, Pattern, PositiveInt, Range
from lakehouse.suites import SILVER_METADATA_COLUMNS

ColumnType = Literal["string", "double", "long", "int", "boolean", "timestamp", "date"]


MaskName = Annotated[str, Pattern(r"^[A-Z][A-Z0-9_]{0,31}$", "an upper-case name such as EMAIL")]


@dataclass(frozen=True)
class TextDedupeConfig:
    """Exact duplicates of a text column (lakehouse/text_prep.py): rows whose text, normalised for
    matching, equals an earlier kept row's under another key are quarantined as duplicate_text."""

    column: Identifier
    # Shorter texts are never duplicates ("Hi", "Thanks!" recur in any conversation).
    min_chars: Annotated[int, Range(low=0)] = 32


@dataclass(frozen=True)
class DerivedColumn:
    """A column silver computes from the prepared row (``entities.<e>.derived.<name>``)."""

    sql: str  # a Spark SQL expression over the row's columns
    type: ColumnType  # its result is cast to this


@dataclass(frozen=True)
class TextPrepConfig:
    """How silver prepares an entity's free-text columns before its suite checks them
    (lakehouse/text_prep.py): Unicode normalisation, control characters, masking."""

    columns: list[Identifier]  # string columns to prepare
    normalize: Literal["NFC", "NFKC", "none"] = "NFC"
    strip_control: bool = True  # C0/C1 control characters other than tab and newline are removed
    # Placeholder name -> Java regular expression, applied in order: each match becomes <NAME>,
    # and the row's ``masked_counts`` map keeps how many of each. The raw record of a quarantined
    # row and its rescued fields are masked the same way, so unmasked text stays in bronze.
    mask: dict[MaskName, str] = field(default_factory=dict)
    dedupe: TextDedupeConfig | None = None

    def problems(self) -> list[tuple[str, str]]:
        if not self.columns:
            return [("columns", "name at least one string column to prepare")]
        return []


@dataclass(frozen=True)
class EntityConfig:
    """A silver entity: the typed record parsed from its sources' bronze rows."""

    sources: list[Identifier]  # bronze.<source> tables it reads
    columns: dict[Identifier, ColumnType]  # the declared schema, in order
    keys: list[Identifier]  # deduplication key
    event_time: Identifier  # which version of a key is the latest
    suite: Identifier  # expectations/<suite>.json under the env or base conf dir
    # How late an event may arrive: a row whose event time is older than the newest event time
    # in silver before its micro-batch, minus this, goes to quarantine with reason "late".
    watermark: Duration = "1 hour"
    # An event time later than the micro-batch's processing time plus this goes to quarantine as
    # "future_event_time" (clock skew): it never moves the late cut-off or a gold watermark.
    max_future: Duration = "1 hour"
    # Double columns that may hold NaN or +-Infinity; in any other, a non-finite value is
    # quarantined as "not_finite".
    allow_non_finite: list[Identifier] = field(default_factory=list)
    # Fields the schema does not declare. rescue: kept as JSON in _rescued; evolve: each becomes a
    # new string column of silver (Delta schema evolution); quarantine: the row is quarantined.
    unexpected_fields: Literal["rescue", "evolve", "quarantine"] = "rescue"
    max_files_per_trigger: PositiveInt | None = None  # rate limit on the bronze Delta files per batch
    # A record (line or message) longer than this many bytes is quarantined as "too_large", unparsed.
    max_record_bytes: PositiveInt = 262_144
    # Silver's query keeps an index of silver's keys in its driver (24 bytes a key), so a batch of
    # new keys is appended instead of MERGEd (lakehouse/silver_keys.py); past this many keys it
    # drops the index and MERGEs every batch. 0: no index.
    key_index_max_keys: Annotated[int, Range(low=0)] = 5_000_000
    text: TextPrepConfig | None = None  # free-text preparation (lakehouse/text_prep.py)
    # Columns silver computes from the prepared row (after text:), in order. Silver keeps them,
    # and the suite checks them like declared columns.
    derived: dict[Identifier, DerivedColumn] = field(default_factory=dict)

    def problems(self) -> list[tuple[str, str]]:
        for name in (*self.keys, self.event_time):
            if name not in self.columns:
                return [("keys" if name in self.keys else "event_time", f"'{name}' is not a declared column")]
        if self.columns[self.event_time] not in ("timestamp", "date"):
            return [("event_time", f"'{self.event_time}' is a {self.columns[self.event_time]} column, not a timestamp")]
        for name in self.allow_non_finite:
            if self.columns.get(name) != "double":
                return [("allow_non_finite", f"'{name}' is not a declared double column")]
        if not self.keys:
            return [("keys", "at least one key column is required")]
        return self._text_problems()

    def _text_problems(self) -> list[tuple[str, str]]:
        taken = {*self.columns, *RESERVED_COLUMNS}
        for name in self.derived:
            if name in taken:
                return [(f"derived.{name}", "clashes with a declared or silver column")]
        if self.text is None:
            return []
        for name in self.text.columns:
            if self.columns.get(name) != "string":
                return [("text.columns", f"'{name}' is not a declared string column")]
        dedupe = self.text.dedupe
        if dedupe is not None and dedupe.column not in self.text.columns:
            return [("text.dedupe.column", f"'{dedupe.column}' is not one of text.columns")]
        if dedupe is not None and f"{dedupe.column}_hash" in {*taken, *self.derived}:
            return [("text.dedupe.column", f"its hash column '{dedupe.column}_hash' clashes with another column")]
        return []

    @property
    def prepared_columns(self) -> list[str]:
        """Columns silver adds to the declared ones: the masks' counts, the dedupe hash, the
        derived columns (in that order)."""
        text = self.text
        added = ["masked_counts"] if text is not None and text.mask else []
        if text is not None and text.dedupe is not None:
            added.append(f"{text.dedupe.column}_hash")
        return [*added, *self.derived]


# Names silver gives columns of its own (lakehouse/silver_tables.py, EntityConfig.prepared_columns).
RESERVED_COLUMNS = (*SILVER_METADATA_COLUMNS, "masked_counts")
