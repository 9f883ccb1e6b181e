"""The causal_lm task without Spark: the model is causal, token rows are cut and padded, a short
run beats the untrained model and a unigram model, a user's own module and batch function train,
a run stopped at a checkpoint and resumed takes the very steps an unbroken run takes, and bf16
autocast runs its step on CPU."""

from __future__ import annotations

import dataclasses
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lakehouse.config.training import LanguageModelConfig
from lakehouse.failpoints import FAILPOINTS_ENV, FailpointError
from lakehouse.text_tokens import BOS, EOS, PAD
from ml.data import Snapshot
from ml.lm import TinyGPT, check_code, decode, encode, generate, lm_loss, next_token_batch, token_matrix
from ml.lm_train import autocast
from ml.spec import TrainSpec
from ml.train import train_process
from tests.fixtures import tiny_lm

WORDS = "the cat sat on a mat and a dog ran to the big red house with my friend who likes green tea".split()


def _token_table(path, rows: int = 600, seq_len: int = 64) -> Snapshot:
    """Sentences of a small vocabulary as byte tokens; every tenth row held out."""
    rng = random.Random(3)
    tokens = [[BOS, *" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))).encode(), EOS][:seq_len + 1]
              for _ in range(rows)]
    pq.write_table(pa.table({"tokens": tokens, "heldout": [i % 10 == 0 for i in range(rows)]}), path)
    return Snapshot("gold.tokens", 0, [(path.absolute().as_uri(), rows)])


def _spec(snapshot: Snapshot, tmp_path, **lm) -> TrainSpec:
    settings = LanguageModelConfig(**{"seq_len": 64, "d_model": 64, "layers": 2, "heads": 4,
                                      "checkpoint_every_steps": 20, **lm})
    return TrainSpec(snapshot=snapshot, features=[], label="", split_key=[], validation_fraction=0.1, hidden=[],
                     dropout=0.0, optimizer="adam", learning_rate=3e-3, batch_size=16, epochs=2, seed=7,
                     log_every_steps=5, task="causal_lm", lm=settings, checkpoint_dir=str(tmp_path / "checkpoint"))


@pytest.fixture
def snapshot(tmp_path) -> Snapshot:
    return _token_table(tmp_path / "tokens.parquet")


def test_the_model_sees_no_later_token():
    torch.manual_seed(0)
    model = TinyGPT(259, 32, d_model=32, layers=2, heads=4).eval()
    ids = torch.randint(0, 256, (2, 16))
    changed = ids.clone()
    changed[:, 10:] = 7
    with torch.no_grad():
        before, after = model(ids), model(changed)
    assert before.shape == (2, 16, 259)
    torch.testing.assert_close(before[:, :10], after[:, :10])
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_rows_are_cut_and_padded_and_padding_is_never_a_target():
    matrix = token_matrix([[1, 2, 3], list(range(10)), []], seq_len=4, pad_id=PAD)
    assert matrix.tolist() == [[1, 2, 3, PAD, PAD], [0, 1, 2, 3, 4], [PAD] * 5]
    inputs, targets = next_token_batch(matrix, PAD)
    logits = torch.zeros(3, 4, 259)
    # uniform logits: the loss is log(259) over the scored targets only, 2 + 4 of them
    assert lm_loss(logits, targets, PAD, reduction="sum").item() == pytest.approx(6 * torch.log(torch.tensor(259.0)).item())


def test_text_goes_in_and_out_as_bytes():
    assert encode("hé") == [BOS, 104, 195, 169]
    assert decode([104, 195, 169, EOS, 105]) == "hé"
    assert decode([104, 0xFF]) == "h\ufffd"  # bytes that are not UTF-8: replaced, never an error


def test_a_short_run_beats_the_untrained_model_and_a_unigram_model(snapshot, tmp_path):
    result = train_process(_spec(snapshot, tmp_path))
    final = result.epochs[-1]["val_perplexity"]
    assert result.figures["untrained_perplexity"] > 200  # about the vocabulary's 259: it knows nothing
    assert final < result.figures["unigram_perplexity"] < result.figures["untrained_perplexity"]
    assert [e["step"] for e in result.epochs] == [33, 66] and result.steps[-1] == 66
    assert result.train_rows == 540 and result.validation_rows == 60
    text = generate(TinyGPT(259, 64, 64, 2, 4).eval(), "the ", 20, 64, seed=1)
    assert isinstance(text, str) and len(text.encode()) <= 20 * 4


def test_a_user_module_and_batch_function_named_in_config_train(snapshot, tmp_path):
    spec = _spec(snapshot, tmp_path, module="tests.fixtures.tiny_lm:BigramLM", module_options={"scale": 0.02},
                 batch_fn="tests.fixtures.tiny_lm:shifted")
    assert check_code(spec.lm) is None
    calls = tiny_lm.CALLS["shifted"]
    result = train_process(dataclasses.replace(spec, learning_rate=0.05))
    assert tiny_lm.CALLS["shifted"] >= calls + 66  # every training step went through it
    assert set(result.state_dict) == {"table.weight"}
    assert result.epochs[-1]["val_perplexity"] < 0.5 * result.figures["untrained_perplexity"]


@pytest.mark.parametrize("lm,message", [
    ({"module": "tests.fixtures.tiny_lm:Missing"}, "training.lm.module: cannot load tests.fixtures.tiny_lm:Missing"),
    ({"batch_fn": "no_such_package.x:f"}, "training.lm.batch_fn: cannot load no_such_package.x:f"),
    ({"module": "tests.fixtures.tiny_lm:BigramLM", "module_options": {"width": 3}}, "fails: "),
    ({"module": "tests.fixtures.tiny_lm:shifted"}, "fails: "),  # a function, called with vocab_size=: an error
])
def test_unusable_code_is_named_before_training(lm, message):
    assert message in check_code(LanguageModelConfig(**lm))


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """One run of the token table from start to end, without a stop."""
    path = tmp_path_factory.mktemp("unbroken")
    snapshot = _token_table(path / "tokens.parquet")
    return snapshot, train_process(_spec(snapshot, path))


@pytest.mark.parametrize("stop", [40, 33])  # mid-epoch; an epoch's end, between two points of the curve
def test_a_resumed_run_takes_the_steps_an_unbroken_run_takes(tmp_path, monkeypatch, stop, unbroken):
    snapshot, unbroken = unbroken
    spec = _spec(snapshot, tmp_path / "b")
    monkeypatch.setenv(FAILPOINTS_ENV, f"train.checkpoint@{stop}")  # stops right after that step's checkpoint
    with pytest.raises(FailpointError):
        train_process(spec)
    monkeypatch.delenv(FAILPOINTS_ENV)
    resumed = train_process(dataclasses.replace(spec, resume=True))
    assert resumed.figures["resumed_from_step"] == stop
    # a point every 5 steps, and one at each checkpoint (20, 40, 60: on the way; 33, 66: the epochs' ends)
    assert resumed.steps == unbroken.steps == sorted({*range(5, 66, 5), 33, 66})
    assert resumed.train_loss == pytest.approx(unbroken.train_loss, rel=1e-5)
    assert len(resumed.epochs) == len(unbroken.epochs) == 2
    for theirs, ours in zip(unbroken.epochs, resumed.epochs, strict=True):
        assert ours == pytest.approx(theirs, rel=1e-5)


def test_a_resume_with_other_settings_is_refused_by_name(snapshot, tmp_path, monkeypatch):
    from ml.resume import ResumeError, ResumePoint, check_same_settings
    from ml.spec import resume_settings

    spec = _spec(snapshot, tmp_path)
    point = ResumePoint("run-1", 0, 2, 40, 1, resume_settings(spec))
    check_same_settings(point, dataclasses.replace(spec, lm=dataclasses.replace(spec.lm, sample_tokens=5)))
    changed = dataclasses.replace(spec, batch_size=32, lm=dataclasses.replace(spec.lm, max_steps=150))
    with pytest.raises(ResumeError, match=r"training.batch_size was 16, is 32; training.lm.max_steps was None, is 150"):
        check_same_settings(point, changed)


def test_a_checkpoint_that_cannot_be_written_stops_the_run(snapshot, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(OSError):
        train_process(dataclasses.replace(_spec(snapshot, tmp_path), checkpoint_dir=str(blocker)))


def test_bf16_autocast_runs_a_training_step_on_cpu():
    """The GPU's autocast path, on CPU: the step runs and its loss is finite."""
    torch.manual_seed(0)
    model = TinyGPT(259, 16, d_model=32, layers=1, heads=2)
    inputs, targets = next_token_batch(torch.randint(0, 256, (4, 17)), PAD)
    with autocast(torch.device("cpu"), True):
        logits = model(inputs)
    assert logits.dtype == torch.bfloat16
    loss = lm_loss(logits, targets, PAD)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("settings,key", [({"pad_id": 259}, "pad_id"), ({"d_model": 30, "heads": 4}, "heads")])
def test_settings_that_cannot_work_are_refused(settings, key):
    assert LanguageModelConfig(**settings).problems()[0][0] == key
