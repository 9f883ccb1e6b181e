"""Batch scoring as a spark-submit job.

    spark-submit --packages io.delta:delta-spark_4.1_2.13:4.4.0 spark_jobs/score_batch.py [--env ENV] [--data-dir DIR]

Same flags as ``lakehouse score``: the registered model's champion scores the feature table into
gold.predictions.
"""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
