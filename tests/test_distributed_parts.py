"""The parts of several-process training that need no processes: how a batch (or the validation split) is shared
among the ranks, and how a job's CPU threads are. Fast, unlike tests/test_distributed.py, which launches them."""

from __future__ import annotations

import pytest

from finetune.distributed import Ranks, ddp_threads, shard_bounds


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_the_ranks_shards_cover_every_example_once_in_order_and_differ_by_one_at_most(world):
    """For every size, uneven ones included (the last global batch, a validation split of 9 images among 2): the
    ranks' [start, stop) parts, taken rank by rank, are exactly 0..n-1, and no part is more than one longer than
    another, so no example is scored twice or left out."""
    for n in range(0, 3 * world + 2):
        parts = [shard_bounds(n, Ranks(rank=rank, world=world)) for rank in range(world)]
        covered = [i for start, stop in parts for i in range(start, stop)]
        assert covered == list(range(n)), (n, parts)
        sizes = [stop - start for start, stop in parts]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True), (n, sizes)


def test_the_processes_of_one_job_share_its_threads():
    """`threads: T` with L processes on the node: each takes as many as fit L times in T, at least one, so together
    they use no more than T (where T >= L), and one more each would exceed it."""
    for threads in range(1, 21):
        for local in range(1, 9):
            each = ddp_threads(threads, local)
            assert each >= 1
            if threads >= local:
                assert each * local <= threads < (each + 1) * local, (threads, local, each)
            else:
                assert each == 1, (threads, local, each)
