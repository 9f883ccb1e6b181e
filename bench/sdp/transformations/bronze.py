"""SDP bronze: the telemetry landing files as a streaming Delta table, one row per line.

Copied into the pipeline project by bench/pipeline_vs_sdp.py, which says where the landing files
are in $SDP_LANDING (this file runs in the spark-pipelines client process, which inherits it).
Like ours: the line's text, the file it came from and the ingest time (ours also keeps the line
number, which Spark's text source does not give).
"""

import os

from pyspark import pipelines as dp
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

spark = SparkSession.active()


# No format= here: spark.sql.sources.default is delta (a format argument makes a second run fail
# with DELTA_CANNOT_CHANGE_PROVIDER).
@dp.table(name="bronze_telemetry", comment="telemetry landing files, one row per line")
def bronze_telemetry():
    return (spark.readStream.format("text").load(os.environ["SDP_LANDING"])
            .select("value", F.col("_metadata.file_path").alias("_source_file"),
                    F.current_timestamp().alias("_ingested_at")))
