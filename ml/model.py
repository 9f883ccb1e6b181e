"""The model: a small MLP regressor that carries its own input and label scaling.

The scaling is fitted on the training split only (by the train function, across all processes)
and stored as buffers, so the logged model takes raw feature values and returns the label in its
own units: what scoring and anyone loading it from MLflow expect.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPRegressor(nn.Module):
    def __init__(self, n_features: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        self.shape = (n_features, list(hidden), float(dropout))  # the architecture, as constructed
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_std", torch.ones(n_features))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))

    def set_scaling(self, x_mean, x_std, y_mean, y_std) -> None:
        """Fix the scaling; a feature constant in training (std 0) is only centred (divided by 1), so a
        value scoring sees away from that constant enters the network at its own scale."""
        x_std = torch.as_tensor(x_std)
        self.x_mean.copy_(torch.as_tensor(x_mean))
        self.x_std.copy_(torch.where(x_std > 1e-6, x_std, torch.ones_like(x_std)))
        self.y_mean.copy_(torch.as_tensor(y_mean))
        self.y_std.copy_(torch.clamp(torch.as_tensor(y_std), min=1e-6))

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction in label-standard units (what the loss is computed on)."""
        return self.net((x - self.x_mean) / self.x_std).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaled(x) * self.y_std + self.y_mean


# -- the model's files: weights and architecture, loadable without running code ---------------
#
# A pickled module (MLflow's pytorch flavor) runs whatever code its bytes name when loaded, so
# whoever can write the artifact store could run code in `score`. The model is kept instead as
# its state dict (tensors only, read back with torch.load(weights_only=True), which refuses
# anything else) and its architecture as JSON; the MLflow model is a pyfunc whose loader is this
# module (MLmodel: loader_module ml.model), so mlflow.pyfunc.load_model reads the same files.

WEIGHTS_FILE = "state_dict.pt"
ARCHITECTURE_FILE = "architecture.json"


class UnsafeModel(ValueError):
    """The model's files are not a state dict and architecture this module wrote."""


def save_model_files(model: MLPRegressor, features: list[str], directory) -> None:
    """Write ``state_dict.pt`` and ``architecture.json`` into ``directory``."""
    import json
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _, hidden, dropout = model.shape
    architecture = {"kind": "MLPRegressor", "features": list(features), "hidden": hidden, "dropout": dropout}
    (directory / ARCHITECTURE_FILE).write_text(json.dumps(architecture, indent=2))
    torch.save({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
               directory / WEIGHTS_FILE)


def load_model_files(directory) -> tuple[MLPRegressor, list[str]]:
    """(the model in eval mode, its feature names) from what :func:`save_model_files` wrote.
    Runs no code from the files: a pickle that is not plain tensors is refused (UnsafeModel)."""
    import json
    import pickle
    from pathlib import Path

    directory = Path(directory)
    try:
        architecture = json.loads((directory / ARCHITECTURE_FILE).read_text())
        features, hidden = list(architecture["features"]), [int(h) for h in architecture["hidden"]]
        dropout = float(architecture.get("dropout", 0.0))
        if architecture.get("kind") != "MLPRegressor" or not features:
            raise ValueError(f"not an MLPRegressor architecture: {architecture!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnsafeModel(f"{directory / ARCHITECTURE_FILE}: {exc}") from exc
    try:
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UnsafeModel(f"{directory / WEIGHTS_FILE} is not a plain state dict (refused unread): {first}") from exc
    model = MLPRegressor(len(features), hidden, dropout)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise UnsafeModel(f"{directory / WEIGHTS_FILE} does not fit {architecture}: {exc}") from exc
    return model.eval(), features


class PyfuncModel:
    """What mlflow.pyfunc.load_model returns for this model: ``predict(DataFrame) -> ndarray``."""

    def __init__(self, model: MLPRegressor, features: list[str]):
        self.model, self.features = model, features

    def predict(self, data, params=None):
        import numpy as np

        values = np.asarray(data[self.features] if hasattr(data, "columns") else data, dtype="float32")
        with torch.no_grad():
            return self.model(torch.from_numpy(values)).numpy()


def _load_pyfunc(path: str) -> PyfuncModel:
    """MLflow's pyfunc entry point (loader_module ml.model); ``path`` is the logged data directory."""
    return PyfuncModel(*load_model_files(path))
