"""Which clips a process evaluates when a run is split over processes, and the process state.

Launched with ``accelerate launch`` or ``torchrun``, every process (rank ``r`` of ``n``) takes
the clips ``ids[r::n]`` of the (limited) sorted clip list: a fixed, disjoint split that covers
every clip and does not depend on timing, so a resumed run gives each rank the same clips.
:func:`process_state` reads the rank, the world size and the device from
``accelerate.PartialState`` (which sets up ``torch.distributed``: NCCL on GPUs, gloo on CPUs),
and gives a barrier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["ProcessState", "process_state", "shard"]


def shard(clip_ids: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The clips of process ``rank`` of ``world_size``: ``clip_ids[rank::world_size]``.

    Raises:
        ValueError: ``world_size < 1`` or ``rank`` outside ``0 .. world_size - 1``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1} and world_size >= 1; got rank {rank}, "
                         f"world_size {world_size}")
    return list(clip_ids)[rank::world_size]


@dataclass(frozen=True)
class ProcessState:
    """This process's place in a (possibly one-process) run.

    Attributes:
        rank, world_size: process index and count.
        device: the torch device this process computes on.
        wait: blocks until every process reaches it (no-op in a one-process run).
    """

    rank: int
    world_size: int
    device: Any
    wait: Callable[[], None]

    @property
    def is_main(self) -> bool:
        """Rank 0, which aggregates."""
        return self.rank == 0


def process_state(cpu: bool = False) -> ProcessState:
    """The state of this process from ``accelerate.PartialState`` (``cpu=True`` forces the CPU)."""
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    return ProcessState(rank=state.process_index, world_size=state.num_processes, device=state.device,
                        wait=state.wait_for_everyone)
