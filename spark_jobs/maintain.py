"""Table maintenance as a spark-submit job.

    spark-submit --packages io.delta:delta-spark_4.1_2.13:4.4.0 spark_jobs/maintain.py \
        [--table TABLE ...] [--dry-run] [--env ENV] [--data-dir DIR]

Same flags as ``lakehouse maintain``; the session spark-submit configured is reused. Inside an
always-on ``lakehouse run`` maintenance already runs every ``maintenance.interval``.
"""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["maintain", *sys.argv[1:]]))
