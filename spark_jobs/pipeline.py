"""The pipeline's flows in one Spark application, as a spark-submit job.

    spark-submit --packages io.delta:delta-spark_4.1_2.13:4.4.0 spark_jobs/pipeline.py \
        --once [--only FLOW ...] [--env ENV] [--data-dir DIR] [--set key=value ...]

Same flags as ``lakehouse run``; the session spark-submit configured is reused.
"""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
