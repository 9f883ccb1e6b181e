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
