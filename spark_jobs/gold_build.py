"""Gold build as a spark-submit job.

    spark-submit --packages io.delta:delta-spark_4.1_2.13:4.4.0 spark_jobs/gold_build.py \
        (--table NAME [--table NAME ...] | --all) [--once | --trigger 10s] [--env ENV] [--data-dir DIR]

Same flags as ``lakehouse gold``; the session spark-submit configured is reused.
"""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["gold", *sys.argv[1:]]))
