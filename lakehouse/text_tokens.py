"""The chat scenario's training table, ``gold.chat_tokens`` (a batch gold table's ``transform``,
lakehouse/gold.py): each conversation document as byte-level tokens, cut into training sequences.

Tokens are the document's UTF-8 bytes (0-255) between ``BOS`` and ``EOS``, so no vocabulary is
downloaded and any text has tokens. A document longer than ``seq_len`` + 1 tokens is cut into
sequences of at most ``seq_len`` + 1 tokens, each sharing its first token with the previous
one's last, so every next-token pair is in exactly one sequence. A conversation's sequences all go
to one ``shard`` (``shards`` of them, by a hash of the conversation id) and carry whether the
conversation is held out for evaluation (``heldout``: the same hash, so a conversation is never in
both). Training (ml/lm.py, ml/lm_train.py) reads the table at a pinned Delta version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # ml/ reads the token ids below in processes that may have no Spark
    from pyspark.sql import DataFrame, SparkSession

BOS, EOS, PAD = 256, 257, 258
VOCAB_SIZE = 259  # bytes, then BOS, EOS, PAD


def byte_tokens(spark: SparkSession, inputs: dict[str, DataFrame], *, input: str | None = None, key: str = "conversation_id",
                column: str = "document", seq_len: int = 256, shards: int = 8,
                heldout_fraction: float = 0.1) -> DataFrame:
    """One row per training sequence (module doc): key, ``sequence`` (its index in the document),
    ``shard``, ``heldout``, ``tokens`` (array<int>)."""
    from pyspark.sql import functions as F

    if seq_len < 2 or shards < 1 or not 0.0 <= heldout_fraction < 1.0:
        raise ValueError("byte_tokens needs seq_len >= 2, shards >= 1 and 0 <= heldout_fraction < 1")
    documents = inputs[input] if input else next(iter(inputs.values()))  # default: the one input
    data = F.encode(F.col(column), "UTF-8")
    # Each byte of the document's UTF-8, as an int (Spark's own functions: no Python worker).
    byte_values = F.transform(F.sequence(F.lit(1), F.greatest(F.octet_length(data), F.lit(1))),
                              lambda i: F.conv(F.hex(F.substring(data, i, 1)), 16, 10).cast("int"))
    tokens = F.concat(F.array(F.lit(BOS)), F.when(F.octet_length(data) > 0, byte_values)
                      .otherwise(F.array().cast("array<int>")), F.array(F.lit(EOS)))
    bucket = F.pmod(F.xxhash64(F.col(key)), F.lit(10_000))
    doc = documents.select(F.col(key), tokens.alias("_tokens"), bucket.alias("_bucket"))
    count = F.greatest(F.lit(1), F.ceil((F.size("_tokens") - 1) / F.lit(seq_len)))
    return doc.select(
        F.col(key), F.posexplode(F.sequence(F.lit(0), count - 1)).alias("sequence", "_start"), "_tokens", "_bucket",
    ).select(
        F.col(key), F.col("sequence").cast("int").alias("sequence"),
        F.pmod(F.col("_bucket"), F.lit(shards)).cast("int").alias("shard"),
        (F.col("_bucket") < F.lit(int(heldout_fraction * 10_000))).alias("heldout"),
        F.slice("_tokens", F.col("_start") * seq_len + 1, seq_len + 1).alias("tokens"),
    )
