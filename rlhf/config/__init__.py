"""The configuration: the schema, every option documented beside its field (schema.py), and the
step from Hydra's composed config to a checked `RLHFConfig` (check.py)."""

from rlhf.config.schema import (  # noqa: F401  (the names every layer imports from rlhf.config)
    SPLITS,
    CompareConfig,
    ConfigError,
    DataConfig,
    DataFormat,
    DeepSpeedConfig,
    FieldMap,
    GenerateConfig,
    LoggerBackend,
    LoggerConfig,
    LoraConfig,
    ModelConfig,
    OnError,
    PPOStageConfig,
    PrepareConfig,
    RewardConfig,
    RLHFConfig,
    RMStageConfig,
    SFTStageConfig,
    SplitConfig,
    StageConfig,
    TinyModelConfig,
    ToyConfig,
    TrainConfig,
)
