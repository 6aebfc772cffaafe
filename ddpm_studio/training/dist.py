"""The torchrun process group, or a single process; and the seeds every rank derives from ``train.seed``."""

from __future__ import annotations

import contextlib
import os

import torch

STREAM_DIFFUSION, STREAM_DROPOUT, STREAM_PREVIEW, STREAM_INIT = 1, 2, 3, 4  # independent random streams


def mix(*values: int) -> int:
    """A 63-bit seed from several integers (SplitMix64 finaliser over a running combination)."""
    z = 0x9E3779B97F4A7C15
    for v in values:
        z = (z ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        z = (z ^ (z >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 29
    return z & 0x7FFFFFFFFFFFFFFF


class Dist:
    """The torchrun process group (WORLD_SIZE, RANK, LOCAL_RANK), or a single process."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        self.owns_group = False
        self.backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, use_cuda: bool) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            self.backend = "nccl" if use_cuda else "gloo"
            if use_cuda:
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend=self.backend)
            self.owns_group = True
        else:
            self.backend = dist.get_backend()

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self, wait_for_peers: bool = False) -> None:
        """Leave the process group. After a normal finish every rank first waits for the others
        (a barrier): a rank that tore gloo down while its peer was still connected was seen to abort
        at exit ("terminate called without an active exception", 2 of 8 two-process CPU runs).
        After a failure it does not wait, since the peer may be gone."""
        if self.owns_group:
            import gc

            import torch.distributed as dist

            gc.collect()  # a DDP wrapper left in a reference cycle goes now, not at interpreter exit
            if wait_for_peers:
                with contextlib.suppress(Exception):
                    dist.barrier()
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self.owns_group = False
