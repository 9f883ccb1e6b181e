from __future__ import annotations

import pytest

from lakehouse.config import load_config
from lakehouse.tables import TableNameError, resolve_table
from tests.conftest import CONF_DIR


def test_local_tables_live_under_the_data_dir(config):
    ref = resolve_table(config, "bronze.telemetry")
    assert ref.path == str((config.storage.data_dir / "tables/bronze/telemetry").absolute())
    assert ref.identifier == "bronze.telemetry"


def test_unity_catalog_mapping():
    config = load_config("prod", conf_dir=CONF_DIR, overrides=["catalog.name=lake", "catalog.schemas.ops=ops_monitoring"])
    assert resolve_table(config, "ops.stream_progress").identifier == "lake.ops_monitoring.stream_progress"
    assert resolve_table(config, "silver.telemetry").path is None


@pytest.mark.parametrize("name", ["raw.telemetry", "bronze.Telemetry", "bronze.x;drop", "bronze", "gold."])
def test_bad_table_names_are_refused(config, name):
    with pytest.raises(TableNameError):
        resolve_table(config, name)
