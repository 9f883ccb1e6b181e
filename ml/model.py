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
        """Fix the scaling; a constant feature (std 0) is only centred."""
        self.x_mean.copy_(torch.as_tensor(x_mean))
        self.x_std.copy_(torch.clamp(torch.as_tensor(x_std), min=1e-6))
        self.y_mean.copy_(torch.as_tensor(y_mean))
        self.y_std.copy_(torch.clamp(torch.as_tensor(y_std), min=1e-6))

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction in label-standard units (what the loss is computed on)."""
        return self.net((x - self.x_mean) / self.x_std).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaled(x) * self.y_std + self.y_mean
