"""What the train function needs from a distributed backend, for each backend.

One train function runs under every backend (``ml.train.train_process``); it asks its
:class:`Comm` for its rank, to sum tensors over all processes, and to wrap the model and the
optimiser so gradients are averaged:
  - local: one process, nothing to exchange;
  - horovod: Horovod (Gloo on CPU, NCCL where it was built with it): DistributedOptimizer,
    initial state broadcast from rank 0;
  - torch-distributor: torch.distributed as TorchDistributor starts it (gloo on CPU, nccl on GPU),
    the model wrapped in DistributedDataParallel.
"""

from __future__ import annotations

import os

import torch


class Comm:
    rank = 0
    size = 1
    local_rank = 0

    def allreduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """(model to call in training, optimiser to step): both synchronised across processes."""
        return model, optimizer

    def close(self) -> None:
        pass


class HorovodComm(Comm):
    def __init__(self):
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

    def allreduce_sum(self, tensor):
        return self.hvd.allreduce(tensor, op=self.hvd.Sum)

    def prepare(self, model, optimizer):
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        optimizer = self.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
        return model, optimizer

    def close(self):
        self.hvd.shutdown()


class TorchComm(Comm):
    def __init__(self, gpu: bool):
        import torch.distributed as dist

        self.dist = dist
        dist.init_process_group("nccl" if gpu else "gloo")  # rendezvous from TorchDistributor's env
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.gpu = gpu

    def allreduce_sum(self, tensor):
        if self.gpu:  # NCCL reduces CUDA tensors only
            on_device = tensor.cuda()
            self.dist.all_reduce(on_device, op=self.dist.ReduceOp.SUM)
            return on_device.cpu()
        self.dist.all_reduce(tensor, op=self.dist.ReduceOp.SUM)
        return tensor

    def prepare(self, model, optimizer):
        from torch.nn.parallel import DistributedDataParallel

        # DDP broadcasts rank 0's parameters when it wraps the model and averages gradients.
        wrapped = DistributedDataParallel(model, device_ids=[self.local_rank] if self.gpu else None)
        return wrapped, optimizer

    def close(self):
        self.dist.destroy_process_group()


def make_comm(backend: str, gpu: bool) -> Comm:
    if backend == "horovod":
        return HorovodComm()
    if backend == "torch-distributor":
        return TorchComm(gpu)
    return Comm()
