"""The chat scenario's parts of ``lakehouse demo`` (lakehouse/demo.py runs the flow): the shipped
corpus landed beside the generated messages, what silver's text preparation did (PII masked by
type), what gold's text transforms did (near duplicates removed, documents, token sequences), and
a short language-model run with the held-out perplexity before and after it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse.config import LakehouseConfig
from lakehouse.tables import read_table, resolve_table

DEMO_LANGUAGES = ["english"]  # of the chatterbot corpus: 2,026 dialogues, 4,332 messages
DEMO_STEPS = 150  # the demo's training run: at most this many steps (training.lm.max_steps, if lower, wins)


def land_corpus(landing_dir: Path, source_name: str) -> None:
    """== 1b: the chatterbot-corpus dialogues, as chat messages beside the generated ones (real
    text; a file landed by an earlier demo is left alone)."""
    from lakehouse.corpus import convert

    print(f"\n== 1b. the chatterbot corpus ({', '.join(DEMO_LANGUAGES)}) as {source_name} messages")
    convert(landing_dir, source_name, DEMO_LANGUAGES)


def show_text_prep(spark: SparkSession, config: LakehouseConfig, entity: str) -> None:
    """PII masked in silver by type (the per-row ``masked_counts``)."""
    silver = read_table(spark, resolve_table(config, f"silver.{entity}"))
    masked = (silver.select(F.explode("masked_counts").alias("type", "count"))
              .groupBy("type").agg(F.sum("count").alias("count"), F.count(F.when(F.col("count") > 0, 1)).alias("rows"))
              .orderBy("type").collect())
    print(f"PII masked in silver.{entity}, by type (placeholders, rows):")
    for row in masked:
        print(f"  {row['count'] or 0:>6,}  <{row['type']}> in {row['rows']:,} rows")


def show_text_gold(spark: SparkSession, config: LakehouseConfig, gold_flows) -> None:
    """What the text transforms made: near duplicates removed, documents, token sequences."""
    for flow in gold_flows:
        transform = config.gold_table(flow.name).transform or ""
        table = read_table(spark, resolve_table(config, flow.id))
        if transform.endswith(":near_duplicates"):
            similarity = table.agg(F.avg("similarity")).first()[0]
            print(f"near duplicates removed: {table.count():,} (each with its nearest kept message; mean Jaccard "
                  f"{similarity or 0:.2f})")
        elif transform.endswith(":byte_tokens"):
            row = table.agg(F.count(F.when(~F.col("heldout"), 1)).alias("train"),
                            F.count(F.when(F.col("heldout"), 1)).alias("heldout"),
                            F.sum(F.size("tokens")).alias("tokens")).first()
            print(f"token sequences: {row['train']:,} to train on, {row['heldout']:,} held out "
                  f"({row['tokens'] or 0:,} tokens)")


def train_language_model(spark: SparkSession, config: LakehouseConfig):
    """== 6 for a causal_lm task: a short local run; the perplexity before and after; a sample."""
    from ml.lm_tracking import SAMPLES_FILE
    from ml.run import run_training

    lm = config.training.lm
    steps = min(lm.max_steps or DEMO_STEPS, DEMO_STEPS)
    short = replace(config, training=replace(config.training, lm=replace(lm, max_steps=steps)))
    summary = run_training(spark, short, "local", 1, gpu=False, force=False)
    print("\n".join(summary.describe()))
    figures = summary.figures
    print(f"held-out perplexity: {figures.get('untrained_perplexity', float('nan')):.2f} before training, "
          f"{summary.final.get('val_perplexity', float('nan')):.2f} after {summary.final.get('step', steps)} steps "
          f"(a unigram model: {figures.get('unigram_perplexity', float('nan')):.2f})")
    _print_sample(summary, SAMPLES_FILE)
    return summary


def _print_sample(summary, name: str) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    run = MlflowClient(summary.tracking_uri).get_run(summary.run_id)
    text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{name}")
    print(f"sample generations ({name} of the run):")
    for line in text.strip().splitlines()[:6]:
        print(f"  {line}")
