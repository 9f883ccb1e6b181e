"""Training as a spark-submit job.

    spark-submit --packages io.delta:delta-spark_4.1_2.13:4.4.0 spark_jobs/train_model.py \
        [--backend local|horovod|torch-distributor] [--num-proc N] [--gpu] [--force] [--env ENV] [--data-dir DIR]

Same flags as ``lakehouse train``; the session spark-submit configured is reused (Horovod and
TorchDistributor run their processes as tasks of that session's executors).
"""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
