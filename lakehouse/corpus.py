"""A real corpus for the chat scenario: the dialogues of the ``chatterbot-corpus`` package
(BSD-licensed YAML, 28 languages) converted into the chat feed's JSON lines, so the pipeline runs on
real text as well as generated text. ``lakehouse corpus chatterbot`` runs it.

Each YAML dialogue becomes one conversation: its lines are turns 1, 2, ... alternating ``user`` and
``assistant``, with ``language`` from the corpus directory and timestamps one second apart from
``start``. One landing file per language (``chatterbot-<language>.jsonl``) and a manifest
(``_manifests/chatterbot.json``), written as lakehouse/generator_runs.py writes a generator's.
The output is the same for the same package and ``start``: a file already landed with the same
bytes is left alone, and one with other bytes is refused (landed files must not change).
Next stop: ``lakehouse ingest --source chat`` (bronze.chat).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from lakehouse.errors import UsageError
from lakehouse.generator_runs import Manifest, _atomic_write

# The corpus' directory names as BCP 47 tags (null where none fits).
LANGUAGE_TAGS = {
    "bengali": "bn", "chinese": "zh", "dutch": "nl", "english": "en", "french": "fr", "german": "de",
    "hebrew": "he", "hindi": "hi", "hinglish": "hi-Latn", "indonesian": "id", "italian": "it", "japanese": "ja",
    "korean": "ko", "marathi": "mr", "oriya": "or", "persian": "fa", "portuguese": "pt", "russian": "ru",
    "spanish": "es", "swedish": "sv", "tamil": "ta", "telugu": "te", "thai": "th", "traditionalchinese": "zh-TW",
    "turkish": "tr", "ukrainian": "uk", "urdu": "ur", "yoruba": "yo",
}
RUN_ID = "chatterbot"


def corpus_dir() -> Path:
    """Where the installed package keeps its YAML files (one directory per language)."""
    try:
        import chatterbot_corpus
    except ImportError:
        raise UsageError("the chatterbot-corpus package is not installed (make install installs it)") from None
    return Path(chatterbot_corpus.__file__).parent / "data"


def dialogues(language_dir: Path) -> tuple[list[tuple[str, list[str]]], int]:
    """(category, lines) of every dialogue of one language, in file order; and how many entries
    were a single string instead of a list (a YAML indentation slip in the corpus: kept as a
    one-line dialogue)."""
    found, single = [], 0
    for path in sorted(language_dir.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for entry in data.get("conversations") or []:
            if isinstance(entry, str):
                entry, single = [entry], single + 1
            lines = [str(line) for line in entry or [] if line is not None]
            if lines:
                found.append((path.stem, lines))
    return found, single


def convert(landing_dir: Path, source: str, languages: list[str] | None = None,
            start: str = "2026-01-01T00:00:00Z", progress=print) -> Manifest:
    """Write the corpus (``languages``: directory names; None: all) as chat messages into
    ``landing_dir``; the manifest of what is there."""
    root = corpus_dir()
    available = sorted(p.name for p in root.iterdir() if p.is_dir())
    unknown = sorted(set(languages or ()) - set(available))
    if unknown:
        raise UsageError(f"no such corpus language: {', '.join(unknown)} (have: {', '.join(available)})")
    try:
        clock = datetime.fromisoformat(start.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--start {start!r} is not an ISO 8601 time such as 2026-01-01T00:00:00Z") from None
    first = clock.astimezone(timezone.utc) if clock.tzinfo else clock.replace(tzinfo=timezone.utc)
    manifest = Manifest(source, RUN_ID, 0, 0.0, line_faults=())
    written = landing_dir / "_manifests" / f"{RUN_ID}.json"
    if written.is_file():  # languages landed by an earlier run stay in the manifest
        converted = {f"chatterbot-{language}.jsonl" for language in languages or available}
        manifest.files += [f for f in json.loads(written.read_text())["files"] if f["file"] not in converted]
    for language in languages or available:
        found, single = dialogues(root / language)
        # Each language's clock starts at --start: its file's bytes do not depend on which other
        # languages are converted with it (english alone, then all, lands english once).
        clock, lines = first, []
        for index, (category, turns) in enumerate(found):
            conversation = f"chatterbot-{language}-{category}-{index:05d}"
            for turn, text in enumerate(turns, start=1):
                message = {"conversation_id": conversation, "turn": turn,
                           "role": "user" if turn % 2 else "assistant", "text": text,
                           "language": LANGUAGE_TAGS.get(language),
                           "timestamp": clock.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
                lines.append(json.dumps(message, ensure_ascii=False))
                clock += timedelta(seconds=1)
        name = f"chatterbot-{language}.jsonl"
        state = _land(landing_dir / name, ("\n".join(lines) + "\n").encode("utf-8"))
        manifest.files.append({"file": name, "lines": len(lines)})
        note = f" ({single} one-line entries)" if single else ""
        progress(f"  {name}: {len(found):,} dialogues, {len(lines):,} messages{note}, {state}")
    manifest.write(landing_dir)
    return manifest


def _land(path: Path, data: bytes) -> str:
    if path.exists():
        if path.read_bytes() == data:
            return "already landed"
        raise UsageError(f"{path} exists with other contents; landed files must not change (remove it, or "
                         "land the corpus in another source's directory)")
    _atomic_write(path, data)
    return "landed"
