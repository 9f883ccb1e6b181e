from lakehouse.config import spark_interval
from lakehouse.streaming import trigger_for


def test_trigger_for_once_and_interval(config):
    assert trigger_for(True, None, config) == {"availableNow": True}
    assert trigger_for(False, "10s", config) == {"processingTime": "10000 milliseconds"}
    assert trigger_for(False, None, config) == {"processingTime": spark_interval(config.streaming.trigger)}


def test_spark_interval_forms():
    """Every accepted form reaches Spark in the one syntax it always parses (it refuses '1 min', '1.5h')."""
    assert spark_interval("500ms") == "500 milliseconds"
    assert spark_interval("2m") == "120000 milliseconds"
    assert spark_interval("1 min") == "60000 milliseconds"
    assert spark_interval("1.5h") == "5400000 milliseconds"
    assert spark_interval("2 days") == "172800000 milliseconds"
    assert spark_interval("0.25ms") == "250 microseconds"


def test_a_python_error_in_a_batch_is_summarised_by_its_own_line():
    from lakehouse.streaming import failure_summary

    text = ("[FOREACH_BATCH_USER_FUNCTION_ERROR] An error occurred in the user provided function in foreach batch "
            "sink. Reason: An exception was raised by the Python Proxy. Return Message: Traceback (most recent "
            "call last):\n  File \"x.py\", line 644, in _call_proxy\n    return_value = f(*params)\n"
            "ValueError: bad row\n SQLSTATE: 39000\n\tat org.apache.spark.Foo.bar(Foo.scala:60)\n"
            "Caused by: java.io.IOException: other")
    assert failure_summary(RuntimeError(text)) == "ValueError: bad row"
    assert failure_summary(RuntimeError("\n[STREAM_FAILED] stopped\nmore")) == "[STREAM_FAILED] stopped"
