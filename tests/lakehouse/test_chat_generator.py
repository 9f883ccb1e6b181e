"""The chat scenario's generator (lakehouse/chat_generator.py) and configuration layer."""

from __future__ import annotations

import json
import re

import pytest

from lakehouse.chat_generator import LINE_FAULTS, PII_KINDS, ChatGenerator
from lakehouse.config import ConfigError, load_config
from lakehouse.generator_runs import generate_batch
from tests.conftest import CONF_DIR, edit_conf


def _shingles(text: str, size: int = 5) -> set[str]:
    return {text[i:i + size] for i in range(len(text) - size + 1)}


def test_same_seed_same_bytes_and_every_fault_is_planted(tmp_path):
    one, two = (ChatGenerator(3, 0.2, "2026-01-01T00:00:00Z") for _ in range(2))
    first, again = [one.next_line() for _ in range(3000)], [two.next_line() for _ in range(3000)]
    assert [line.data() for line in first] == [line.data() for line in again]
    kinds = {line.kind for line in first}
    assert kinds == {"valid", *LINE_FAULTS}

    manifest = generate_batch(ChatGenerator(3, 0.2, "2026-01-01T00:00:00Z"), tmp_path, "chat", "r1", 3, 500, 2)
    saved = json.loads((tmp_path / "_manifests" / "r1.json").read_text())
    assert saved["fault_counts"] == manifest.fault_counts() and set(LINE_FAULTS) <= set(saved["fault_counts"])
    assert saved["valid_lines"] + sum(saved["fault_counts"][k] for k in LINE_FAULTS) == 500


def test_messages_are_unique_and_faults_are_what_the_manifest_says():
    generator = ChatGenerator(11, 0.25, "2026-01-01T00:00:00Z")
    lines = [generator.next_line() for _ in range(4000)]
    texts = {}
    for line in lines:
        if line.kind == "invalid_utf8":
            with pytest.raises(UnicodeDecodeError):
                line.data().decode("utf-8")
            continue
        message = json.loads(line.data())
        assert set(message) <= {"conversation_id", "turn", "role", "text", "language", "timestamp"}
        assert message["role"] in ("user", "assistant") and message["turn"] >= 1
        assert line.event_id == f"{message['conversation_id']}/{message['turn']}"
        texts[line.event_id] = message["text"]
    matched = [re.sub(r"\s+", " ", texts[line.event_id]).strip().lower() for line in lines
               if line.kind in ("valid", "near_duplicate", "control_chars", *PII_KINDS)]
    assert len(matched) == len(set(matched))  # only the planted duplicates repeat a text
    for line in lines:
        text = texts.get(line.event_id)
        if line.kind == "exact_duplicate":
            assert text == texts[line.detail] and line.detail != line.event_id
        elif line.kind == "near_duplicate":
            a, b = _shingles(text), _shingles(texts[line.detail])
            assert text != texts[line.detail] and len(a & b) / len(a | b) >= 0.75
        elif line.kind in PII_KINDS:
            assert line.detail in text
        elif line.kind == "control_chars":
            assert re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text)
        elif line.kind == "empty_text":
            assert not text.strip()
        elif line.kind == "overlong":
            assert len(text) > 4000


def test_the_chat_scenario_replaces_the_base_feeds():
    chat = load_config("test", conf_dir=CONF_DIR, scenario="chat")
    assert (list(chat.sources), list(chat.entities), chat.scenario) == (["chat"], ["chat"], "chat")
    assert sorted(chat.gold) == ["chat_documents", "chat_near_duplicates", "chat_tokens"]  # no telemetry table
    assert chat.spark.master == "local[2]"  # the env still overlays it
    assert chat.suite_path("chat") == CONF_DIR / "scenarios" / "chat" / "expectations" / "chat.json"
    base = load_config("test", conf_dir=CONF_DIR)
    assert "telemetry" in base.entities and base.scenario == "telemetry"
    with pytest.raises(ConfigError, match="no such scenario 'nope' \\(have: telemetry, chat"):
        load_config("test", conf_dir=CONF_DIR, scenario="nope")


def test_text_preparation_settings_are_checked(conf_copy):
    entity = conf_copy / "scenarios" / "chat" / "entities" / "chat.yml"
    edit_conf(entity, "  text_chars:\n", "  turn:\n")
    with pytest.raises(ConfigError, match="derived.turn: clashes with a declared or silver column"):
        load_config("test", conf_dir=conf_copy, scenario="chat")
    edit_conf(entity, "  turn:\n", "  text_chars:\n")
    edit_conf(entity, "  columns: [text]", "  columns: [turn]")
    with pytest.raises(ConfigError, match="'turn' is not a declared string column"):
        load_config("test", conf_dir=conf_copy, scenario="chat")
    edit_conf(entity, "  columns: [turn]", "  columns: [text]")
    edit_conf(entity, "    EMAIL:", "    email:")
    with pytest.raises(ConfigError, match="mask"):
        load_config("test", conf_dir=conf_copy, scenario="chat")


def test_the_chatterbot_corpus_becomes_chat_messages(tmp_path, capsys):
    from lakehouse.cli import main
    from lakehouse.corpus import LANGUAGE_TAGS, corpus_dir, dialogues

    data = tmp_path / "data"
    args = ["--env", "test", "--scenario", "chat", "--data-dir", str(data), "corpus", "chatterbot"]
    assert main([*args, "--languages", "english,ukrainian"]) == 0
    landing = data / "landing" / "chat"
    english = [json.loads(line) for line in (landing / "chatterbot-english.jsonl").read_text().splitlines()]
    found, _ = dialogues(corpus_dir() / "english")
    assert len(english) == sum(len(lines) for _, lines in found) > 1000
    assert [m["text"] for m in english[:len(found[0][1])]] == found[0][1]
    assert {m["role"] for m in english if m["turn"] == 1} == {"user"} and {m["language"] for m in english} == {"en"}
    assert len({(m["conversation_id"], m["turn"]) for m in english}) == len(english)
    assert sorted({m["timestamp"] for m in english})[0] == "2026-01-01T00:00:00.000Z"
    ukrainian = (landing / "chatterbot-ukrainian.jsonl").read_text(encoding="utf-8")
    assert "Що таке історія?" in ukrainian  # kept as UTF-8, not escaped

    before = (landing / "chatterbot-english.jsonl").read_bytes()
    assert main([*args]) == 0  # again: the same bytes, left alone; the manifest keeps both languages
    assert "already landed" in capsys.readouterr().out
    manifest = json.loads((landing / "_manifests" / "chatterbot.json").read_text())
    assert {f["file"] for f in manifest["files"]} == {"chatterbot-english.jsonl", "chatterbot-ukrainian.jsonl"}
    assert manifest["total_lines"] == len(english) + len(ukrainian.splitlines())
    assert main([*args, "--languages", "all"]) == 0  # each language's clock is its own: english is left alone
    assert (landing / "chatterbot-english.jsonl").read_bytes() == before
    assert len(json.loads((landing / "_manifests" / "chatterbot.json").read_text())["files"]) == len(LANGUAGE_TAGS)
    assert main([*args, "--start", "2025-01-01T00:00:00Z"]) == 2  # other bytes: refused
    assert "landed files must not change" in capsys.readouterr().err
    assert (landing / "chatterbot-english.jsonl").read_bytes() == before
    assert main([*args, "--languages", "klingon"]) == 2
