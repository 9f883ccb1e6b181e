"""Silver for the chat scenario: text prepared (NFC, control characters, PII masked), the suite's
text rules, exact duplicates by hash; every planted fault counted as the manifest says, and no
planted PII outside bronze."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.chat_generator import PII_KINDS, ChatGenerator
from lakehouse.config import load_config
from lakehouse.generator_runs import generate_batch
from lakehouse.reconcile import reconcile
from lakehouse.runner import run_flow
from lakehouse.tables import read_table, resolve_table
from lakehouse.text_prep import masked
from tests.conftest import CONF_DIR

# What silver does with each planted fault: the reasons a quarantined one gets (None: kept).
LENGTH = "expect_column_value_lengths_to_be_between(text)"
EXPECTED_REASONS = {
    "exact_duplicate": ["duplicate_text"],
    "empty_text": [LENGTH, "expect_column_values_to_be_between(text_alnum_share)"],
    "overlong": [LENGTH],
    "repeated_line_spam": ["expect_column_values_to_be_between(text_repeated_line_share)"],
    "symbol_noise": ["expect_column_values_to_be_between(text_alnum_share)"],
    "invalid_utf8": ["not_utf8"],
}


@pytest.fixture
def chat_config(tmp_path):
    return load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data", scenario="chat")


def _land(config, records, files, seed, fault_rate=0.2, run_id=None):
    landing = Path(config.landing_path("chat"))
    landing.mkdir(parents=True, exist_ok=True)
    generator = ChatGenerator.from_config(config.generator, seed=seed, fault_rate=fault_rate)
    return generate_batch(generator, landing, "chat", run_id or f"r{seed}", seed, records, files)


def _all_text(frame) -> list[str]:
    """Every row of a table as one JSON string (all its columns)."""
    return [row[0] for row in frame.select(F.to_json(F.struct(*frame.columns))).collect()]


@pytest.mark.slow
def test_chat_faults_are_caught_as_the_manifest_says_and_no_pii_leaves_bronze(spark, chat_refined):
    chat_config, manifest = chat_refined
    counts = manifest.fault_counts()

    silver = read_table(spark, resolve_table(chat_config, "silver.chat"))
    quarantine = read_table(spark, resolve_table(chat_config, "silver.chat_quarantine"))
    by_line = {(row._source_file.rsplit("/", 1)[-1], row._source_line): sorted(row.reasons)
               for row in quarantine.select("_source_file", "_source_line", "reasons").collect()}
    planted = {(f["file"], f["line"]): f for f in manifest.faults if f["line"]}
    for where, fault in planted.items():
        expected = EXPECTED_REASONS.get(fault["kind"])
        assert by_line.get(where) == (sorted(expected) if expected else None), fault
    assert len(by_line) == sum(counts[kind] for kind in EXPECTED_REASONS)
    assert quarantine.where("value IS NULL").count() == 0  # duplicates too keep their record
    assert silver.count() == manifest.total_lines - len(by_line)
    assert reconcile(spark, chat_config, "chat").holds

    # PII masked with its placeholder, counted per type; the planted strings are nowhere but bronze
    masked_counts = silver.select(F.explode("masked_counts")).groupBy("key").agg(F.sum("value")).collect()
    assert {row[0]: row[1] for row in masked_counts} == {name: counts[kind] for kind, name in PII_KINDS.items()}
    rows = _all_text(silver) + _all_text(quarantine)
    pii = [f["detail"] for f in manifest.faults if f["kind"] in PII_KINDS]
    assert pii and not [value for value in pii if any(value in row for row in rows)]
    bronze = read_table(spark, resolve_table(chat_config, "bronze.chat"))
    assert bronze.where(F.col("value").cast("string").contains(pii[0])).count() == 1

    # control characters gone, text in NFC, the derived columns filled
    texts = [row.text for row in silver.select("text").collect()]
    assert not [t for t in texts if any(unicodedata.category(c) == "Cc" and c not in "\t\n" for c in t)]
    assert all(unicodedata.is_normalized("NFC", t) for t in texts)
    assert silver.where("text_chars IS NULL OR text_alnum_share IS NULL OR text_hash IS NULL "
                        "AND char_length(text) >= 32").count() == 0


@pytest.mark.slow
def test_duplicates_across_batches_and_re_sends(spark, chat_config):
    """A text seen in an earlier batch under another key is a duplicate; the same key sent again
    (an at-least-once producer) is not: the key's deduplication keeps one row."""
    landing = Path(chat_config.landing_path("chat"))
    landing.mkdir(parents=True, exist_ok=True)
    long_text = "My Falcon drone keeps restarting since Monday, order 123456, bought in Oslo last spring."

    def message(conversation, turn, text, stamp="2026-01-01T00:00:00Z"):
        return json.dumps({"conversation_id": conversation, "turn": turn, "role": "user", "text": text,
                           "timestamp": stamp})

    (landing / "a.jsonl").write_text(message("c1", 1, long_text) + "\n" + message("c1", 2, "Hi") + "\n")
    assert run_flow(spark, chat_config, "bronze.chat", {"availableNow": True}) == 0
    assert run_flow(spark, chat_config, "silver.chat", {"availableNow": True}) == 0
    (landing / "b.jsonl").write_text("\n".join([
        message("c1", 1, long_text),  # a re-send: same key, same text
        message("c2", 1, "  " + long_text.upper().replace(" ", "   ") + "\u0007"),  # the same text, as matched
        message("c3", 4, "Hi"),  # short texts are never duplicates
        message("c4", 1, long_text.replace("Oslo", "Lima"), "2025-12-31T00:00:00Z"),
        message("c5", 1, long_text.replace("Oslo", "Lima"), "2026-01-02T00:00:00Z"),  # c4's text, later
        # c6 first says what c7 says, then says something else: its first text is superseded and
        # makes no duplicate of c7's (silver keeps c6's second text and c7's)
        message("c6", 1, long_text.replace("Oslo", "Rome"), "2025-12-30T00:00:00Z"),
        message("c7", 1, long_text.replace("Oslo", "Rome"), "2026-01-01T00:00:00Z"),
        message("c6", 1, long_text.replace("Oslo", "Kyiv"), "2026-01-03T00:00:00Z"),
        # c8 first says something new, then repeats c4's text: its newest message is a duplicate,
        # and its first is superseded by it (never checked): nothing of c8 enters silver
        message("c8", 1, long_text.replace("Oslo", "Bern"), "2025-12-29T00:00:00Z"),
        message("c8", 1, long_text.replace("Oslo", "Lima"), "2026-01-04T00:00:00Z"),
    ]) + "\n")
    assert run_flow(spark, chat_config, "bronze.chat", {"availableNow": True}) == 0
    assert run_flow(spark, chat_config, "silver.chat", {"availableNow": True}) == 0
    silver = {(r.conversation_id, r.turn) for r in read_table(spark, resolve_table(chat_config, "silver.chat")).collect()}
    assert silver == {("c1", 1), ("c1", 2), ("c3", 4), ("c4", 1), ("c6", 1), ("c7", 1)}
    c6 = read_table(spark, resolve_table(chat_config, "silver.chat")).where("conversation_id = 'c6'").first()
    assert "Kyiv" in c6.text
    quarantine = read_table(spark, resolve_table(chat_config, "silver.chat_quarantine"))
    assert sorted((r._source_line, r.reasons) for r in quarantine.collect()) == [
        (2, ["duplicate_text"]), (5, ["duplicate_text"]), (10, ["duplicate_text"])]
    assert all(json.loads(r.value)["conversation_id"] in ("c2", "c5", "c8") for r in quarantine.collect())
    assert reconcile(spark, chat_config, "chat").holds

    # A backfill: an older version of c4 (silver holds a newer one, so it changes nothing there)
    # claims no text, and c9's later message with that text is kept, not a duplicate.
    (landing / "c.jsonl").write_text("\n".join([
        message("c4", 1, long_text.replace("Oslo", "Riga"), "2025-12-01T00:00:00Z"),
        message("c9", 1, long_text.replace("Oslo", "Riga"), "2026-02-01T00:00:00Z"),
    ]) + "\n")
    assert run_flow(spark, chat_config, "bronze.chat", {"availableNow": True}) == 0
    assert run_flow(spark, chat_config, "silver.chat", {"availableNow": True}) == 0
    silver = {(r.conversation_id, r.turn): r.text for r in read_table(spark, resolve_table(chat_config, "silver.chat")).collect()}
    assert ("c9", 1) in silver and "Lima" in silver[("c4", 1)]
    assert read_table(spark, resolve_table(chat_config, "silver.chat_quarantine")).count() == 3
    assert reconcile(spark, chat_config, "chat").holds


def test_masks_catch_the_usual_forms_and_leave_other_numbers(spark, chat_config):
    entity = chat_config.entity("chat")
    cases = {
        "write to ana.rosa+chat@mail.example.org now": "write to <EMAIL> now",
        "call +1 415 555 0134 or (415) 555-0134 or 415-555-0134": "call <PHONE> or <PHONE> or <PHONE>",
        "London: +44 20 7946 0958.": "London: <PHONE>.",
        "card 4111 1111 1111 1111, or 4111-1111-1111-1111": "card <CARD>, or <CARD>",
        "server 192.168.10.254 is down": "server <IPV4> is down",
        # not PII: dates, times, order numbers, versions, prices, tickets
        "order 123456 on 2026-01-05 at 10:30, R-12345, v1.2.3, $1,299.00, 3.14": None,
    }
    frame = spark.createDataFrame([(text,) for text in cases], "value string")
    got = {row[0]: row[1] for row in frame.select("value", masked(F.col("value"), entity)).collect()}
    for text, expected in cases.items():
        assert got[text] == (expected or text), text


def test_a_quarantined_records_pii_is_masked_through_json_escapes_and_control_characters(spark, chat_config):
    """What silver masks in a message's text is masked in its raw record too: PII written with
    JSON escapes, split by control characters (escaped, or raw in a line that is not JSON), or
    next to an escape that stays (newline, tab, quote) or an escaped emoji; an escaped backslash
    stays as it was."""
    entity = chat_config.entity("chat")
    raw = {
        r'{"text": "mail ana\u0040example.com or 192\u002e168.10.254", "turn": "x"}':
            r'{"text": "mail <EMAIL> or <IPV4>", "turn": "x"}',
        r'{"text": "card 4111\u00011111 1111 1111, b\u0007ob@example.org\r"}': r'{"text": "card <CARD>, <EMAIL>"}',
        '{"text": "not json: jo\x01e@example.com': '{"text": "not json: <EMAIL>',
        r'{"text": "C:\\u0040x \\\u0041 \ud83d\ude00 \u00e9 \" \n \ud83d \uZZ"}':
            r'{"text": "C:\\u0040x \\A {EMOJI} é \" \n {LONE} \uZZ"}',
        # next to an escape that stays escaped, or an emoji (escaped, as json.dumps writes it)
        r'{"text": "call me:\n555-123-4567, \ud83d\ude00555-123-4567\t\"ana@example.com\""}':
            r'{"text": "call me:\n<PHONE>, {EMOJI}<PHONE>\t\"<EMAIL>\""}',
        r'{"text": "upper case \uD83D\uDE00 \ud83d\uDE00 \uDE00"}': r'{"text": "upper case {EMOJI} {EMOJI} {LONE}"}',
        r'{"text": "plain ana@example.com"}': r'{"text": "plain <EMAIL>"}',
    }
    # (expected: an escaped emoji written out, a lone surrogate as U+FFFD)
    raw = {line: read.replace("{EMOJI}", "\U0001f600").replace("{LONE}", "\ufffd") for line, read in raw.items()}
    frame = spark.createDataFrame([(line,) for line in raw], "value string")
    got = {row[0]: row[1] for row in frame.select("value", masked(F.col("value"), entity)).collect()}
    assert got == raw


def test_quarantine_holds_no_escaped_pii(spark, chat_config):
    """End to end: quarantined lines (a bad turn, a line that is not JSON) with escaped PII reach
    silver.chat_quarantine masked."""
    landing = Path(chat_config.landing_path("chat"))
    landing.mkdir(parents=True, exist_ok=True)
    (landing / "escaped.jsonl").write_bytes(
        b'{"conversation_id": "e1", "turn": "one", "role": "user", "text": "ana\\u0040example.com, '
        b'4111\\u00011111\\u00201111 1111", "timestamp": "2026-01-01T00:00:00Z"}\n'
        b'{"conversation_id": "e2", "turn": 1, "text": "call jo\x01e@example.com\n')
    assert run_flow(spark, chat_config, "bronze.chat", {"availableNow": True}) == 0
    assert run_flow(spark, chat_config, "silver.chat", {"availableNow": True}) == 0
    values = [r.value for r in read_table(spark, resolve_table(chat_config, "silver.chat_quarantine")).collect()]
    assert len(values) == 2
    assert not [v for v in values if "example.com" in v or "1111" in v or "u0040" in v]
    assert sum(v.count("<EMAIL>") for v in values) == 2 and sum(v.count("<CARD>") for v in values) == 1
    assert reconcile(spark, chat_config, "chat").holds


@pytest.mark.slow
def test_kill_9_after_silvers_merge_then_restart_decides_every_message_as_before(spark, tmp_path, subprocess_env,
                                                                                 chat_refined):
    """The job killed (SIGKILL) once its MERGE and quarantine append committed and before the
    batch did: the batch is redone with its own rows already in silver, and every message ends
    where a run without the crash (``chat_refined``, on the same bytes) puts it: none lost, none
    doubled, no duplicate judged twice."""
    from lakehouse.failpoints import FAILPOINTS_ENV
    from tests.processes import batches, start_job

    clean, manifest = chat_refined
    crashed = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "crashed", scenario="chat")
    again = _land(crashed, 3000, 2, seed=13, fault_rate=0.2, run_id="c13")
    assert again.to_json() == manifest.to_json()  # the same landing files, byte for byte
    assert run_flow(spark, crashed, "bronze.chat", {"availableNow": True}) == 0
    job = start_job(crashed, {**subprocess_env, FAILPOINTS_ENV: "silver.stats@0=kill"}, "refine.log",
                    "--scenario", "chat", "refine", "--entity", "chat", "--once")
    assert job.wait(timeout=600) == -9
    assert read_table(spark, resolve_table(crashed, "silver.chat")).count() > 0  # the MERGE had committed
    assert 0 not in batches(Path(crashed.checkpoint_path("silver_chat")), "commits")
    assert run_flow(spark, crashed, "silver.chat", {"availableNow": True}) == 0

    def outcome(config):
        silver = read_table(spark, resolve_table(config, "silver.chat"))
        quarantine = read_table(spark, resolve_table(config, "silver.chat_quarantine"))
        return (sorted((r.conversation_id, r.turn, r.text) for r in silver.collect()),
                sorted((r._source_file.rsplit("/", 1)[-1], r._source_line, tuple(r.reasons)) for r in quarantine.collect()))

    rows, quarantined = outcome(crashed)
    assert (rows, quarantined) == outcome(clean)
    assert sum(1 for *_, reasons in quarantined if "duplicate_text" in reasons) > 0
    assert reconcile(spark, crashed, "chat").holds
