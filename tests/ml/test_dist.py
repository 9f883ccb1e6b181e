"""ml.dist: the backends' communicators, as far as one process can see them."""

from __future__ import annotations

import importlib.util
import socket

import pytest
import torch

from ml.dist import Comm, TorchComm, make_comm


def test_the_local_comm_is_one_process_that_exchanges_nothing():
    comm = make_comm("local", gpu=False)
    assert type(comm) is Comm and (comm.rank, comm.size, comm.local_rank) == (0, 1, 0)
    tensor = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert torch.equal(comm.allreduce_sum(tensor), tensor)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert comm.prepare(model, optimizer) == (model, optimizer)
    comm.close()


@pytest.mark.skipif(importlib.util.find_spec("horovod") is not None, reason="Horovod is installed here")
def test_horovod_without_horovod_fails_at_once():
    with pytest.raises(ImportError):
        make_comm("horovod", gpu=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torch_comm_of_one_process_sums_and_wraps_the_model_in_ddp(monkeypatch):
    from torch.nn.parallel import DistributedDataParallel

    # What TorchDistributor sets for each process; a group of one, over the loopback (gloo).
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                        "WORLD_SIZE": "1", "LOCAL_RANK": "0", "GLOO_SOCKET_IFNAME": "lo"}.items():
        monkeypatch.setenv(name, value)
    comm = make_comm("torch-distributor", gpu=False)
    try:
        assert isinstance(comm, TorchComm) and (comm.rank, comm.size, comm.local_rank) == (0, 1, 0)
        total = comm.allreduce_sum(torch.tensor([1.5, -2.0], dtype=torch.float64))
        assert total.tolist() == [1.5, -2.0] and total.dtype == torch.float64
        model = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        wrapped, same = comm.prepare(model, optimizer)
        assert isinstance(wrapped, DistributedDataParallel) and wrapped.module is model and same is optimizer
        torch.testing.assert_close(wrapped(torch.ones(1, 2)), model(torch.ones(1, 2)))
    finally:
        comm.close()
    assert not torch.distributed.is_initialized()


@pytest.mark.skipif(importlib.util.find_spec("horovod") is None, reason="Horovod is not built here")
def test_horovod_comm_of_one_process_sums_and_wraps_the_optimiser():
    comm = make_comm("horovod", gpu=False)  # no horovodrun: a job of one process
    try:
        assert (comm.rank, comm.size, comm.local_rank) == (0, 1, 0)
        assert comm.allreduce_sum(torch.tensor([1.5, -2.0], dtype=torch.float64)).tolist() == [1.5, -2.0]
        model = torch.nn.Linear(2, 1)
        plain = torch.optim.SGD(model.parameters(), lr=0.1)
        same, optimizer = comm.prepare(model, plain)
        # Horovod's DistributedOptimizer: a subclass of the optimiser's class that averages gradients
        assert same is model and optimizer is not plain and isinstance(optimizer, torch.optim.SGD)
        assert type(optimizer).__module__ == "horovod.torch.optimizer"
    finally:
        comm.close()
