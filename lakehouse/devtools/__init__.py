"""Development tooling, outside every job's runtime path: no ingest, refine, gold, train or score
job imports it (`lakehouse bundle check` and `lakehouse demo` with a Kafka source do, lazily).

- bundle_load.py: databricks.yml loaded as the Databricks CLI does (includes, target overrides).
- bundle_check.py: `lakehouse bundle check`, databricks.yml validated offline against the
  Databricks CLI's JSON schema. Its dependencies (jsonschema, regex, ruamel.yaml) are the
  ``[dev]`` extra (``pip install 'lakehouse[dev]'``; ``make install`` installs it).
- kafka_broker.py: a local single-node Kafka broker for tests, benchmarks and ``lakehouse demo``
  with a Kafka source (standard library only; Maven fetches the broker's jars once).
"""
