"""Bronze ingest as a spark-submit job.

    spark-submit --packages io.delta:delta-spark_4.1_2.13:4.4.0 spark_jobs/bronze_ingest.py \
        --source telemetry --once [--env ENV] [--data-dir DIR] [--set key=value ...]

Same flags as ``lakehouse ingest``; the session spark-submit configured is reused.
"""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
