"""Model training on gold tables (datasets, models, Horovod / TorchDistributor / local backends,
MLflow tracking, batch scoring). Not built yet: see the training issue; nothing here is used.
"""
