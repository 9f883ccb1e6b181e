"""The configuration: ``conf/base/`` overlaid by ``conf/scenarios/<scenario>/`` and ``conf/<env>/``,
then command-line overrides.

- lakehouse/config/schema.py: the typed configuration (one frozen dataclass per section);
- lakehouse/config/entities.py: a silver entity's section (columns, keys, text preparation);
- lakehouse/config/values.py: value constraints and durations;
- lakehouse/config/convert.py: the merged YAML tree and its conversion to the dataclasses;
- lakehouse/config/loading.py: :func:`load_config`, which also checks what spans sections.

Everything a caller needs is importable from ``lakehouse.config``.
"""

from lakehouse.config.entities import DerivedColumn, EntityConfig, TextDedupeConfig, TextPrepConfig
from lakehouse.config.loading import (
    CONF_DIR_ENV,
    DEFAULT_ENV,
    DEFAULT_SCENARIO,
    ENV_ENV,
    SCENARIO_ENV,
    default_conf_dir,
    load_config,
)
from lakehouse.config.schema import (
    KAFKA_BOOTSTRAP_ENV,
    LAYERS,
    CatalogConfig,
    CsvOptions,
    GeneratorConfig,
    GoldTableConfig,
    KafkaOptions,
    LakehouseConfig,
    MaintenanceConfig,
    OpsConfig,
    QualityConfig,
    SourceConfig,
    SparkConfig,
    StorageConfig,
    StreamingConfig,
    WatermarkConfig,
    view_name,
)
from lakehouse.config.training import LanguageModelConfig, ModelConfig, RetrainConfig, TrainingConfig
from lakehouse.config.values import check_duration, duration_seconds, spark_interval
from lakehouse.errors import ConfigError

__all__ = [
    "CONF_DIR_ENV", "DEFAULT_ENV", "DEFAULT_SCENARIO", "ENV_ENV", "SCENARIO_ENV", "KAFKA_BOOTSTRAP_ENV",
    "LAYERS", "CatalogConfig", "ConfigError", "DerivedColumn", "TextDedupeConfig", "TextPrepConfig",
    "CsvOptions", "EntityConfig", "GeneratorConfig", "GoldTableConfig", "KafkaOptions", "LakehouseConfig", "LanguageModelConfig",
    "MaintenanceConfig", "ModelConfig", "OpsConfig", "QualityConfig", "RetrainConfig", "SourceConfig", "SparkConfig",
    "StorageConfig", "StreamingConfig",
    "TrainingConfig", "WatermarkConfig", "check_duration", "default_conf_dir", "duration_seconds", "load_config",
    "spark_interval", "view_name",
]
