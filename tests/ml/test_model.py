"""ml.model: the MLP carries its input and label scaling; its files are a state dict and a JSON
architecture, read back without running code from them."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from ml.model import (
    ARCHITECTURE_FILE,
    WEIGHTS_FILE,
    MLPRegressor,
    PyfuncModel,
    UnsafeModel,
    _load_pyfunc,
    load_model_files,
    save_model_files,
)


def _linear(n_features: int, weight: list[float], bias: float = 0.0) -> MLPRegressor:
    """No hidden layer: net(z) = weight . z + bias, so the scaling is seen exactly."""
    model = MLPRegressor(n_features, [])
    with torch.no_grad():
        model.net[0].weight.copy_(torch.tensor([weight]))
        model.net[0].bias.fill_(bias)
    return model.eval()


def test_the_layers_follow_the_architecture():
    model = MLPRegressor(3, [5, 4], dropout=0.25)
    kinds = [type(layer).__name__ for layer in model.net]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    linear = [layer for layer in model.net if isinstance(layer, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linear] == [(3, 5), (5, 4), (4, 1)]
    assert model.shape == (3, [5, 4], 0.25)
    assert "Dropout" not in [type(layer).__name__ for layer in MLPRegressor(3, [5]).net]
    assert model(torch.zeros(7, 3)).shape == (7,)  # one prediction per row


def test_an_unscaled_model_is_the_network_itself():
    model = _linear(2, [1.0, 2.0], bias=0.5)
    x = torch.tensor([[1.0, 1.0], [3.0, -1.0]])
    torch.testing.assert_close(model(x), torch.tensor([3.5, 1.5]))


def test_inputs_are_standardised_and_the_output_is_in_the_labels_units():
    model = _linear(2, [1.0, 1.0], bias=0.25)
    model.set_scaling([10.0, -2.0], [2.0, 0.5], 100.0, 4.0)
    x = torch.tensor([[10.0, -2.0], [14.0, -1.0], [8.0, -2.5]])
    # scaled: (x - mean) / std summed, plus the bias, in label-std units
    torch.testing.assert_close(model.scaled(x), torch.tensor([0.25, 4.25, -1.75]))
    # forward: back to the label's units, scaled * y_std + y_mean
    torch.testing.assert_close(model(x), torch.tensor([101.0, 117.0, 93.0]))


def test_a_constant_label_gives_back_its_value():
    model = _linear(1, [3.0], bias=2.0)
    model.set_scaling([0.0], [1.0], 42.0, 0.0)  # std 0: clamped, never a division by zero
    assert float(model.y_std) == pytest.approx(1e-6)
    torch.testing.assert_close(model(torch.tensor([[5.0], [-5.0]])), torch.tensor([42.0, 42.0]), atol=1e-4, rtol=0)


def test_a_constant_feature_is_centred_without_dividing_by_zero():
    model = _linear(2, [1.0, 1.0])
    model.set_scaling([7.0, 0.0], [0.0, 1.0], 0.0, 1.0)
    assert float(model.x_std[0]) == 1.0 and float(model.x_std[1]) == 1.0  # std 0: only centred
    out = model(torch.tensor([[7.0, 3.0]]))  # the constant feature at its (training) value adds nothing
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([3.0]))


def test_a_constant_feature_is_only_centred_away_from_its_training_value():
    model = _linear(1, [1.0])
    model.set_scaling([7.0], [0.0], 0.0, 1.0)
    torch.testing.assert_close(model.scaled(torch.tensor([[8.0]])), torch.tensor([1.0]))  # got 1e6


def test_scaling_buffers_are_part_of_the_state_dict():
    model = MLPRegressor(2, [3])
    model.set_scaling([1.0, 2.0], [3.0, 4.0], 5.0, 6.0)
    state = model.state_dict()
    assert {"x_mean", "x_std", "y_mean", "y_std"} <= set(state)
    copy = MLPRegressor(2, [3])
    copy.load_state_dict(state)
    assert copy.x_std.tolist() == [3.0, 4.0] and float(copy.y_mean) == 5.0


def _trained(seed: int = 0) -> MLPRegressor:
    torch.manual_seed(seed)
    model = MLPRegressor(3, [4, 2], dropout=0.1)
    model.set_scaling([1.0, 2.0, 3.0], [0.5, 1.5, 2.5], 10.0, 3.0)
    return model.eval()


def test_saved_files_load_as_the_same_model(tmp_path):
    model = _trained()
    save_model_files(model, ["a", "b", "c"], tmp_path / "m")
    architecture = json.loads((tmp_path / "m" / ARCHITECTURE_FILE).read_text())
    assert architecture == {"kind": "MLPRegressor", "features": ["a", "b", "c"], "hidden": [4, 2], "dropout": 0.1}
    loaded, features = load_model_files(tmp_path / "m")
    assert features == ["a", "b", "c"] and not loaded.training and loaded.shape == model.shape
    x = torch.randn(6, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def _saved(tmp_path) -> tuple:
    directory = tmp_path / "m"
    save_model_files(_trained(), ["a", "b", "c"], directory)
    return directory, json.loads((directory / ARCHITECTURE_FILE).read_text())


class _Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


@pytest.mark.parametrize("case", ["no architecture", "not json", "another kind", "no features", "no weights",
                                  "a pickled object", "weights of another shape", "a missing tensor"])
def test_files_that_are_not_a_plain_model_are_refused(tmp_path, case, capsys):
    directory, architecture = _saved(tmp_path)
    weights = torch.load(directory / WEIGHTS_FILE, weights_only=True)
    if case == "no architecture":
        (directory / ARCHITECTURE_FILE).unlink()
    elif case == "not json":
        (directory / ARCHITECTURE_FILE).write_text("{kind: MLP")
    elif case == "another kind":
        (directory / ARCHITECTURE_FILE).write_text(json.dumps({**architecture, "kind": "Transformer"}))
    elif case == "no features":
        (directory / ARCHITECTURE_FILE).write_text(json.dumps({**architecture, "features": []}))
    elif case == "no weights":
        (directory / WEIGHTS_FILE).unlink()
    elif case == "a pickled object":
        torch.save({**weights, "extra": _Payload()}, directory / WEIGHTS_FILE)
    elif case == "weights of another shape":
        (directory / ARCHITECTURE_FILE).write_text(json.dumps({**architecture, "hidden": [5, 2]}))
    elif case == "a missing tensor":
        torch.save({k: v for k, v in weights.items() if k != "y_std"}, directory / WEIGHTS_FILE)
    with pytest.raises(UnsafeModel):
        load_model_files(directory)
    assert "this ran while loading" not in capsys.readouterr().out


def test_a_pickle_payload_is_refused_unread(tmp_path, capsys):
    directory, _ = _saved(tmp_path)
    (directory / WEIGHTS_FILE).write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(UnsafeModel, match="not a plain state dict"):
        load_model_files(directory)
    assert "this ran while loading" not in capsys.readouterr().out


def test_the_pyfunc_takes_a_frame_by_feature_name_or_an_array(tmp_path):
    model = _trained()
    save_model_files(model, ["a", "b", "c"], tmp_path / "m")
    pyfunc = _load_pyfunc(str(tmp_path / "m"))
    assert isinstance(pyfunc, PyfuncModel) and pyfunc.features == ["a", "b", "c"]
    values = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]], dtype="float32")
    with torch.no_grad():
        expected = model(torch.from_numpy(values)).numpy()
    # Columns in another order, and one the model does not take: selected by name.
    frame = pd.DataFrame({"c": values[:, 2], "extra": [9.0, 9.0], "a": values[:, 0], "b": values[:, 1]})
    np.testing.assert_array_equal(pyfunc.predict(frame), expected)
    np.testing.assert_array_equal(pyfunc.predict(values.astype("float64")), expected)
    assert pyfunc.predict(frame).dtype == np.float32 and pyfunc.predict(frame).shape == (2,)
