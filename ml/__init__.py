"""Model training on gold tables, and batch scoring.

    data   the feature table pinned at one Delta version; each process reads its own shard
    model  the MLP regressor (carries its input and label scaling)
    dist   what the train function needs from each backend (local, Horovod, torch.distributed)
    train  the one train function every backend runs, once per process
    run    `lakehouse train`: quality gate, backends, MLflow run, registry and champion alias
    score  `lakehouse score`: the champion model -> gold.predictions
"""
