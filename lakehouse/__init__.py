"""Streaming lakehouse: bronze/silver/gold Delta tables fed by Spark Structured Streaming.

Where a record goes: landing files -> lakehouse.bronze (bronze.<source>) -> silver.<entity>
-> gold.<table> -> ml/ (training). Entry points: lakehouse.cli (the ``lakehouse`` command)
and spark_jobs/*.py (spark-submit / Databricks).
"""

__version__ = "0.1.0"
