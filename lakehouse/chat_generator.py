"""Chat generator for the chat scenario: JSON-lines files of chat messages, one message a line.

A message is ``{"conversation_id", "turn", "role", "text", "language", "timestamp"}``; a
conversation alternates user and assistant turns about one support topic. The text comes from
templates with many slots, so the same seed gives the same bytes, every valid message is unique
(the generator checks), and an answer follows from its question (a language model can learn it).
A fault rate plants the bad input a real chat feed has; the manifest records each one, with what
identifies it (``event_id``: ``<conversation_id>/<turn>``) and its ``detail`` (for PII, the
planted string; for duplicates, the message copied).

lakehouse/generator_runs.py writes the lines as landing files (or Kafka messages) with the manifest.
"""

from __future__ import annotations

import json
import random
import re
from datetime import datetime, timedelta, timezone

from lakehouse.generator import GeneratedLine

# Line-level faults, in the order the manifest lists them.
LINE_FAULTS = (
    "exact_duplicate",     # a copy of an earlier message's text under another conversation and turn
    "near_duplicate",      # an earlier message with a few small edits
    "pii_email",           # PII planted in an otherwise valid message ...
    "pii_phone",
    "pii_ipv4",
    "pii_card",
    "control_chars",       # control characters inside a valid message
    "empty_text",          # empty or white space only
    "overlong",            # longer than any message a chat carries
    "repeated_line_spam",  # one line repeated many times
    "symbol_noise",        # hardly a letter or digit
    "invalid_utf8",        # bytes that are not UTF-8 inside the text
)
PII_KINDS = {"pii_email": "EMAIL", "pii_phone": "PHONE", "pii_ipv4": "IPV4", "pii_card": "CARD"}
OVERLONG_CHARS = 6000  # at least this long (the chat suite's limit is 4,000 characters)
MIN_COPY_CHARS = 100  # duplicates copy messages at least this long (dedupes ignore short texts)

_PRODUCTS = ["Aurora router", "Nimbus laptop", "Orbit phone", "Kestrel camera", "Summit tablet", "Harbor speaker",
             "Quartz watch", "Meridian printer", "Falcon drone", "Cascade monitor", "Beacon doorbell", "Tundra fridge"]
_PROBLEMS = ["does not turn on", "keeps restarting", "lost its Wi-Fi connection", "shows a blank screen",
             "runs very hot", "drains the battery overnight", "will not update", "makes a clicking noise",
             "stopped charging", "freezes after a few minutes"]
_STEPS = ["hold the power button for ten seconds", "unplug it for a minute and plug it back in",
          "install the latest firmware from the settings menu", "reset the network settings",
          "try a different charging cable", "remove the case and let it cool down",
          "turn off battery saver and restart it", "sign out of the app and sign back in"]
_CITIES = ["Lisbon", "Oslo", "Nairobi", "Osaka", "Lima", "Toronto", "Krakow", "Austin", "Hanoi", "Porto", "Cairo"]
_NAMES = ["Ana", "Bilal", "Chen", "Dara", "Elif", "Femi", "Greta", "Hugo", "Ines", "Jonas", "Kai", "Lena", "Mateo",
          "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yara", "Zoe"]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_CASE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # letters only: a code is never a number the masks take
_LANGUAGES = ["en"] * 8 + ["en-GB", None]  # language is optional: None leaves the field out

# Each turn of a conversation is a few sentences, each picked from one pool below (in the order
# the pools come out of the shuffle, so phrasings vary); the slots are the conversation's.
_OPENING = [
    ["Hi, I am {name}.", "Hello, this is {name} from {city}.", "Good morning, {name} here.", "Hey, my name is {name}."],
    ["My {product} {problem} since {day}.", "Since {day} my {product} {problem}.",
     "The {product} I bought {months} months ago {problem}.", "I have a {product} that {problem}."],
    ["The order number is {order}.", "I ordered it in {city}, order {order}.", "Order {order}, if that helps.",
     "It is still under warranty, order {order}."],
]
_FIRST_STEP = [
    ["Thanks {name}, sorry to hear that.", "Sorry about the trouble with your {product}, {name}.",
     "Thank you for the details, {name}."],
    ["First, please {first}.", "Could you {first} and tell me what happens?", "Let us start simple: {first}."],
    ["Does the {product} work after that?", "Tell me if it still {problem} afterwards.",
     "I have noted order {order}."],
]
_STILL_BROKEN = [
    ["I tried to {first}.", "I did {first} as you said.", "Done, I managed to {first}."],
    ["Sadly the {product} still {problem}.", "It still {problem}, nothing changed.",
     "No luck, my {product} still {problem} on {day}."],
    ["What should I try next?", "Any other idea?", "I really need it working by {later}."],
]
_SECOND_STEP = [
    ["Understood, {name}.", "Thanks for trying that.", "OK, then let us go one step further."],
    ["Next, please {second}.", "Please {second} and wait a minute.", "The next step is to {second}."],
    ["If it still {problem}, I will open a repair for order {order}.",
     "If that fails we will repair the {product} for free.", "Let me know the result before {later}."],
]
_FIXED = [
    ["Thank you, that worked!", "Great news, it works again.", "Perfect, problem solved."],
    ["After I chose to {second} the {product} is fine.", "The {product} no longer {problem}.",
     "It has run since {later} without trouble."],
]
_NOT_FIXED = [
    ["That did not help either.", "Still the same, sorry.", "No change at all."],
    ["The {product} still {problem}.", "It {problem} again this morning.", "My {product} keeps failing."],
    ["Can you repair it?", "Please send someone to {city}.", "How long would a repair take?"],
]
_CLOSING = [
    ["Glad to hear it, {name}!", "Wonderful, {name}.", "Happy it works again."],
    ["Your {product} should stay fine now.", "I closed the case for order {order}.",
     "Write again if it ever {problem} again."],
    ["Have a good {later}.", "Enjoy the rest of your week.", "Take care!"],
]
_REPAIR = [
    ["I opened repair ticket R-{ticket} for order {order}.", "Repair R-{ticket} is booked for your {product}."],
    ["A courier will collect the {product} in {city} on {later}.", "Please pack the {product} for pick-up on {later}."],
    ["The repair is free under warranty.", "You will get an e-mail update for R-{ticket}."],
]


class ChatGenerator:
    """Deterministic for a given seed: the same arguments give the same lines, byte for byte."""

    LINE_FAULTS = LINE_FAULTS

    def __init__(self, seed: int, fault_rate: float, start_time: str, seconds_between: float = 20.0):
        self.rng = random.Random(seed)
        self.fault_rate = fault_rate
        self.clock = datetime.fromisoformat(start_time.replace("Z", "+00:00")).astimezone(timezone.utc)
        self.step = timedelta(seconds=seconds_between)
        self.live = False  # True: stamp each message with the wall clock (a live feed)
        self._conversation: list[tuple[str, str]] = []  # the current conversation's (role, text) left to send
        self._conversation_id = ""
        self._turn = 0
        self._language: str | None = None
        self._seen: set[str] = set()  # every valid text, as the dedupe matches it
        self._copyable: list[tuple[str, str]] = []  # (text, event_id): long valid messages to copy

    @classmethod
    def from_config(cls, generator, seed: int | None = None, fault_rate: float | None = None) -> ChatGenerator:
        """A generator with the configured clock; seed and fault rate may be overridden."""
        return cls(generator.seed if seed is None else seed,
                   generator.fault_rate if fault_rate is None else fault_rate, generator.start_time)

    # -- conversations ---------------------------------------------------------------------
    def _new_conversation(self) -> None:
        rng = self.rng
        self._conversation_id = f"conv-{rng.getrandbits(64):016x}"
        self._turn = 0
        self._language = rng.choice(_LANGUAGES)
        slots = {"name": rng.choice(_NAMES), "product": rng.choice(_PRODUCTS), "problem": rng.choice(_PROBLEMS),
                 "order": str(rng.randint(100000, 999999)), "city": rng.choice(_CITIES), "day": rng.choice(_WEEKDAYS),
                 "ticket": str(rng.randint(10000, 99999)), "later": rng.choice(_WEEKDAYS),
                 "months": str(rng.randint(2, 30))}
        slots["first"], slots["second"] = rng.sample(_STEPS, 2)
        fixed = rng.random() < 0.4
        plan = [("user", _OPENING), ("assistant", _FIRST_STEP), ("user", _STILL_BROKEN), ("assistant", _SECOND_STEP),
                ("user", _FIXED if fixed else _NOT_FIXED), ("assistant", _CLOSING if fixed else _REPAIR)]
        turns = plan[:4] if rng.random() < 0.2 else plan
        # Each message: two or three sentences, each from its own pool of phrasings.
        self._conversation = [(role, " ".join(rng.choice(pool).format(**slots)
                                              for pool in rng.sample(pools, min(len(pools), rng.randint(2, 3)))
                                              if pools) + f" [ref {_code(rng)}]") for role, pools in turns]

    def _next_message(self) -> dict:
        if not self._conversation:
            self._new_conversation()
        role, text = self._conversation.pop(0)
        self._turn += 1
        if self.live:
            self.clock = datetime.now(timezone.utc)
        message = {"conversation_id": self._conversation_id, "turn": self._turn, "role": role, "text": text,
                   "language": self._language,
                   "timestamp": self.clock.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
        if message["language"] is None:
            del message["language"]
        self.clock += self.step
        return message

    # -- faults ----------------------------------------------------------------------------
    def _faulty(self, kind: str, message: dict) -> GeneratedLine:
        rng, key = self.rng, _event_id(message)
        text = message["text"]
        if kind in ("exact_duplicate", "near_duplicate"):
            copied, of = rng.choice(self._copyable)
            message["text"] = copied if kind == "exact_duplicate" else self._edited(copied)
            return GeneratedLine(json.dumps(message), kind, key, of)
        if kind in PII_KINDS:
            planted = _pii(kind, rng)
            message["text"] = f"{text} You can reach me at {planted} if needed."
            return GeneratedLine(json.dumps(message), kind, key, planted)
        if kind == "control_chars":
            at = rng.randint(1, len(text) - 1)
            message["text"] = text[:at] + rng.choice(["\x00", "\x07", "\x1b[0m", "\x08", "\x7f", "\x9b"]) + text[at:]
            return GeneratedLine(json.dumps(message), kind, key, "")
        if kind == "empty_text":
            message["text"] = rng.choice(["", " ", "\n\t  ", "\u00a0\u2003"])
            return GeneratedLine(json.dumps(message), kind, key, "")
        if kind == "overlong":
            sentences = []
            while sum(len(s) + 1 for s in sentences) < OVERLONG_CHARS:
                sentences.append(f"Item {len(sentences) + 1}: my {rng.choice(_PRODUCTS)} {rng.choice(_PROBLEMS)}.")
            message["text"] = " ".join(sentences)
            return GeneratedLine(json.dumps(message), kind, key, f"{len(message['text'])} characters")
        if kind == "repeated_line_spam":
            line = f"WIN a free {rng.choice(_PRODUCTS)} today, visit our shop {rng.randint(1, 999)}!!!"
            message["text"] = "\n".join([line] * rng.randint(8, 20))
            return GeneratedLine(json.dumps(message), kind, key, line)
        if kind == "symbol_noise":
            message["text"] = "".join(rng.choice("!?$%^&*#@~+=<>/|") for _ in range(rng.randint(12, 60)))
            return GeneratedLine(json.dumps(message), kind, key, "")
        if kind == "invalid_utf8":
            data = json.dumps(message, ensure_ascii=False).encode("utf-8")
            at = data.index(b'"text": "') + len(b'"text": "') + rng.randint(0, 5)
            bad = rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80"])
            return GeneratedLine(data[:at] + bad + data[at:], kind, key, repr(bad))
        raise ValueError(f"unknown fault kind {kind}")

    def _edited(self, text: str) -> str:
        """A near duplicate: one or two small edits (a character changed, a word dropped or
        doubled) to a text of 100 characters or more, so the two texts' 5-character shingles
        still overlap by 0.75 or more (Jaccard)."""
        rng, words = self.rng, text.split(" ")
        for _ in range(rng.randint(1, 2)):
            at = rng.randrange(len(words))
            edit = rng.random()
            if edit < 0.4 and len(words[at]) > 2:
                chars = list(words[at])
                chars[rng.randrange(len(chars))] = rng.choice("abcdefghijklmnopqrstuvwxyz")
                words[at] = "".join(chars)
            elif edit < 0.7 and len(words) > 8:
                del words[at]
            else:
                words.insert(at, words[at])
        edited = " ".join(words)
        return edited if _matched(edited) != _matched(text) else edited + "!"

    def next_line(self) -> GeneratedLine:
        message = self._next_message()
        # Every text a kept message carries is unique as the dedupe matches it, so only the
        # planted duplicates are duplicates.
        while _matched(message["text"]) in self._seen:
            message["text"] += f" (ref {self.rng.randint(1000, 9999)})"
        self._seen.add(_matched(message["text"]))
        if self._copyable and self.rng.random() < self.fault_rate:
            line = self._faulty(self.rng.choice(LINE_FAULTS), message)
            if line.kind == "near_duplicate":
                self._seen.add(_matched(message["text"]))
            return line
        if len(message["text"]) >= MIN_COPY_CHARS:
            self._copyable.append((message["text"], _event_id(message)))
            if len(self._copyable) > 1000:
                self._copyable = self._copyable[-500:]
        return GeneratedLine(json.dumps(message), "valid", _event_id(message))


def _code(rng: random.Random) -> str:
    """A message reference, as support tools tag messages: two messages on the same template then
    differ in more than their slots (letters only: never a number the masks take)."""
    return "-".join("".join(rng.choice(_CASE_LETTERS) for _ in range(5)) for _ in range(3))


def _event_id(message: dict) -> str:
    return f"{message['conversation_id']}/{message['turn']}"


def _matched(text: str) -> str:
    """Text as silver's exact dedupe compares it (lakehouse/text_prep.py): lower case, runs of
    white space as one space, trimmed."""
    return re.sub(r"\s+", " ", text).strip().lower()


def _pii(kind: str, rng: random.Random) -> str:
    if kind == "pii_email":
        user = f"{rng.choice(_NAMES).lower()}.{rng.choice(_NAMES).lower()}{rng.randint(1, 99)}"
        return f"{user}@{rng.choice(['example.com', 'mail.example.org', 'corp.example.net'])}"
    if kind == "pii_phone":
        return rng.choice([
            f"+1 {rng.randint(201, 989)} {rng.randint(200, 999)} {rng.randint(1000, 9999)}",
            f"({rng.randint(201, 989)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
            f"+44 20 {rng.randint(7000, 7999)} {rng.randint(1000, 9999)}",
            f"{rng.randint(201, 989)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
        ])
    if kind == "pii_ipv4":
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    digits = [4] + [rng.randint(0, 9) for _ in range(14)]
    digits.append(_luhn_check_digit(digits))
    groups = ["".join(map(str, digits[i:i + 4])) for i in range(0, 16, 4)]
    return rng.choice([" ", "-"]).join(groups)


def _luhn_check_digit(digits: list[int]) -> int:
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return (10 - total % 10) % 10
