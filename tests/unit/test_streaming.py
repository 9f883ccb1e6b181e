from lakehouse.streaming import spark_interval, trigger_for


def test_trigger_for_once_and_interval(config):
    assert trigger_for(True, None, config) == {"availableNow": True}
    assert trigger_for(False, "10s", config) == {"processingTime": "10 seconds"}
    assert trigger_for(False, None, config) == {"processingTime": spark_interval(config.streaming.trigger)}


def test_spark_interval_forms():
    assert spark_interval("500ms") == "500 milliseconds"
    assert spark_interval("2m") == "2 minutes"
    assert spark_interval("1 minute") == "1 minute"
