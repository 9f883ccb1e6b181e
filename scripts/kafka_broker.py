#!/usr/bin/env python
"""Start or stop a local single-node Kafka broker (KRaft) for tests and demos; see lakehouse/devtools/kafka_broker.py.

    .venv/bin/python scripts/kafka_broker.py start [--state-dir .kafka] [--version 4.1.1] [--partitions 3]
    .venv/bin/python scripts/kafka_broker.py stop  [--state-dir .kafka]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lakehouse.devtools.kafka_broker import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
