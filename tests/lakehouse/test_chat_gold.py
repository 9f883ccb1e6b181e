"""Gold for the chat scenario: near duplicates by MinHash-LSH (planted pairs found at the recall
the LSH settings promise, every removal a true near duplicate, its nearest kept message
recorded), conversation documents, the byte-level token table; a build killed half-way."""

from __future__ import annotations

import re

import pytest
from pyspark.sql import functions as F

from lakehouse.failpoints import FAILPOINTS_ENV
from lakehouse.runner import run_flow
from lakehouse.tables import read_table, resolve_table, table_exists
from lakehouse.text_tokens import BOS, EOS
from tests.lakehouse.test_chat_silver import _all_text
from tests.processes import start_job

ONCE = {"availableNow": True}


def _matched(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _jaccard(a: str, b: str, size: int = 5) -> float:
    left = {a[i:i + size] for i in range(len(a) - size + 1)}
    right = {b[i:i + size] for i in range(len(b) - size + 1)}
    return len(left & right) / len(left | right)


def _found_probability(similarity: float, bands: int, rows: int) -> float:
    """The chance that LSH makes a pair of this Jaccard similarity a candidate (one band of its
    signatures agrees); a candidate at or above the threshold is then kept for sure."""
    return 1 - (1 - similarity ** rows) ** bands


@pytest.mark.slow
def test_near_duplicates_documents_and_tokens(spark, chat_refined, subprocess_env):
    config, manifest = chat_refined

    # killed once the near duplicates are found and before they are written: nothing is written
    job = start_job(config, {**subprocess_env, FAILPOINTS_ENV: "gold.build=kill"}, "gold.log",
                    "--scenario", "chat", "gold", "--table", "chat_near_duplicates")
    assert job.wait(timeout=600) == -9
    assert not table_exists(spark, resolve_table(config, "gold.chat_near_duplicates"))
    for name in ("chat_near_duplicates", "chat_documents", "chat_tokens"):
        assert run_flow(spark, config, f"gold.{name}", ONCE) == 0, name

    options = config.gold_table("chat_near_duplicates").options
    silver = {(r.conversation_id, r.turn): r.text for r in read_table(spark, resolve_table(config, "silver.chat")).collect()}
    near = read_table(spark, resolve_table(config, "gold.chat_near_duplicates")).collect()
    removed = {(r.conversation_id, r.turn): (r.kept_conversation_id, r.kept_turn) for r in near}
    assert len(removed) == len(near) > 0
    for gone, kept in removed.items():  # the nearest kept message is kept, and truly similar
        assert gone in silver and kept in silver and kept not in removed
        assert _jaccard(_matched(silver[gone]), _matched(silver[kept])) >= options["threshold"] - 0.01

    # the planted pairs: found as often as the settings promise
    planted = []
    for fault in (f for f in manifest.faults if f["kind"] == "near_duplicate"):
        copy, original = (fault["event_id"].rsplit("/", 1), fault["detail"].rsplit("/", 1))
        copy, original = (copy[0], int(copy[1])), (original[0], int(original[1]))
        if copy in silver and original in silver:
            planted.append((copy, _jaccard(_matched(silver[copy]), _matched(silver[original]))))
    assert len(planted) >= 30
    expected = sum(_found_probability(s, options["bands"], options["rows"]) if s >= options["threshold"] else 0.0
                   for _, s in planted) / len(planted)
    recall = sum(copy in removed for copy, _ in planted) / len(planted)
    assert expected > 0.9 and recall >= expected - 0.1, (recall, expected)

    # a rebuild after the crash gives the same rows (deterministic: nothing lost or doubled)
    assert run_flow(spark, config, "gold.chat_near_duplicates", ONCE) == 0
    again = read_table(spark, resolve_table(config, "gold.chat_near_duplicates")).collect()
    assert sorted(again) == sorted(near)

    # documents: each conversation's kept messages in turn order, with role markers
    documents = {r.conversation_id: r for r in read_table(spark, resolve_table(config, "gold.chat_documents")).collect()}
    kept = {}
    for (conversation, turn), text in sorted(silver.items()):
        if (conversation, turn) not in removed:
            kept.setdefault(conversation, []).append(text)
    assert set(documents) == set(kept)
    some = next(iter(kept))
    assert documents[some].messages == len(kept[some])
    assert [line.split("|> ", 1)[1] for line in documents[some].document.split("\n<|")] == kept[some]

    # tokens: the bytes of each document between BOS and EOS, sequences overlapping by one token
    tokens = read_table(spark, resolve_table(config, "gold.chat_tokens"))
    per_conversation = tokens.groupBy("conversation_id").agg(
        F.array_sort(F.collect_list(F.struct("sequence", "tokens"))).alias("parts"),
        F.countDistinct("shard").alias("shards"), F.countDistinct("heldout").alias("splits")).collect()
    assert len(per_conversation) == len(documents)
    for row in per_conversation:
        assert row.shards == 1 and row.splits == 1
        joined = list(row.parts[0].tokens)
        for part in row.parts[1:]:
            assert part.tokens[0] == joined[-1]
            joined += part.tokens[1:]
        assert joined == [BOS, *documents[row.conversation_id].document.encode("utf-8"), EOS]
    assert tokens.agg(F.max(F.size("tokens"))).first()[0] == config.gold_table("chat_tokens").options["seq_len"] + 1
    assert 0 < tokens.where("heldout").select("conversation_id").distinct().count() < len(documents)

    # no planted PII string in any gold table
    pii = [f["detail"] for f in manifest.faults if f["kind"].startswith("pii_")]
    rows = _all_text(read_table(spark, resolve_table(config, "gold.chat_documents")))
    assert pii and not [value for value in pii if any(value in row for row in rows)]


def test_resolve_keeps_the_earliest_and_records_the_nearest_kept():
    from lakehouse.text_dedup import resolve

    def pair(a, b, similarity, order_b=None):
        return {"_key_a": (a,), "_key_b": (b,), "_id_a": 10 * a, "_id_b": 10 * b, "_order_a": a,
                "_order_b": b if order_b is None else order_b, "_similarity": similarity}

    # 1 ~ 2 ~ 3, 1 !~ 3: 2 goes (nearest kept 1); 3 stays, for its only similar message is gone.
    # 4 is similar to both 1 (0.8) and 3 (0.9): it goes, with 3 as its nearest kept message.
    removed = resolve([pair(1, 2, 0.9), pair(2, 3, 0.8), pair(1, 4, 0.8), pair(3, 4, 0.9)])
    assert removed == {(2,): ((1,), 0.9), (4,): ((3,), 0.9)}
    # Equal times: the smaller id is the earlier (5 before 6), and stays.
    assert resolve([pair(6, 5, 0.9, order_b=6)]) == {(6,): ((5,), 0.9)}
    # A key with a null part ranks after the same key with a value (nulls last), not a failed sort.
    nulls = {**pair(8, 9, 0.9, order_b=8), "_key_a": ("x", None), "_key_b": ("x", 1)}
    assert resolve([nulls]) == {("x", None): (("x", 1), 0.9)}
    # Two keys of one id stop the build, naming the remedy.
    clash = {**pair(7, 8, 0.9), "_id_b": 70}
    with pytest.raises(ValueError, match="another seed"):
        resolve([clash])


def test_shingle_sets_signatures_and_similarity_match_plain_python():
    """The vectorised steps, on a batch of texts with the edges (empty, shorter than a shingle,
    characters outside the BMP, repeats), against plain Python sets of substrings."""
    import random

    import numpy as np

    from lakehouse.text_dedup import set_similarity, shingle_sets, signatures

    rng = random.Random(5)
    words = ["router", "restart", "order", "thanks", "é", "\U0001f600", "ab"]
    texts = ["", "ab", "abcd", "abcde", "aaaaaaaaaa", "\U0001f600 x \U0001f600 y"] + [
        " ".join(rng.choice(words) for _ in range(rng.randrange(1, 30))) for _ in range(300)]

    def substrings(text):
        text = text + "\0" * (5 - len(text)) if len(text) < 5 else text
        return {text[i:i + 5] for i in range(len(text) - 4)}

    sets = shingle_sets(texts, 5)
    assert [len(s) for s in sets] == [len(substrings(t)) for t in texts]
    pairs = [(rng.randrange(len(texts)), rng.randrange(len(texts))) for _ in range(2000)]
    got = set_similarity([sets[i] for i, _ in pairs], [sets[j] for _, j in pairs])
    want = [len(substrings(texts[i]) & substrings(texts[j])) / len(substrings(texts[i]) | substrings(texts[j]))
            for i, j in pairs]
    assert np.allclose(got, want)

    # A text's signature does not depend on the batch it is in, and equal sets sign alike.
    a = np.arange(1, 2 * 40, 2, dtype=np.uint32) * np.uint32(2654435761)
    b = np.arange(40, dtype=np.uint32) * np.uint32(40503)
    batch = signatures(texts, 5, a, b)
    assert batch.shape == (len(texts), 40)
    assert all((signatures([texts[i]], 5, a, b)[0] == batch[i]).all() for i in range(0, len(texts), 37))
    assert (signatures(["abcdeabcde"], 5, a, b) == signatures(["abcdeabcdeabcde"], 5, a, b)).all()


def test_a_lost_block_of_kept_rows_runs_the_pairs_again(spark, monkeypatch, capsys):
    """The texts and buckets are local checkpoints (no lineage): a block lost with an executor
    fails the pairs' job, which the build runs again; any other failure stops it."""
    import lakehouse.text_dedup as text_dedup

    texts = spark.createDataFrame([("c1", 1, "hello", "2026-01-01")], "conversation_id string, turn int, text string, "
                                  "timestamp string")
    calls = []

    def flaky(*args):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("org.apache.spark.SparkException: Checkpoint block rdd_12_0 not found! Either ...")
        return [{"_key_a": ("c0", 1), "_key_b": ("c1", 1), "_id_a": 1, "_id_b": 2, "_order_a": "2025",
                 "_order_b": "2026", "_similarity": 0.9}]

    monkeypatch.setattr(text_dedup, "similar_pairs", flaky)
    options = {"key": ["conversation_id", "turn"], "order": "timestamp"}
    removed = text_dedup.near_duplicates(spark, {"silver.chat": texts}, **options).collect()
    assert len(calls) == 2 and [tuple(r) for r in removed] == [("c1", 1, "c0", 1, 0.9)]
    assert "near_duplicates: kept rows lost (an executor went away); doing it again (attempt 2 of 3)" in \
        capsys.readouterr().err

    monkeypatch.setattr(text_dedup, "similar_pairs", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        text_dedup.near_duplicates(spark, {"silver.chat": texts}, **options)
