"""The parts of several-process training that need no processes: how a batch (or the validation split) is shared
among the ranks, and how a job's CPU threads are. Fast, unlike tests/test_distributed.py, which launches them."""

from __future__ import annotations

import pytest

from finetune.distributed import Ranks, ddp_threads, shard_bounds
from finetune.launch import allocation_problem


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


def test_several_nodes_train_only_in_a_slurm_allocation_of_that_many_with_a_node_list():
    """Where the job's Slurm variables give the allocation: training on N nodes needs a job of N nodes whose node list
    is known (Slurm writes "(null)" where it has none); the message says what the job is instead."""
    job = {"SLURM_JOB_ID": "42"}
    assert allocation_problem(1, {}) is None  # one node: anywhere
    assert allocation_problem(2, {**job, "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "n[1-2]"}) is None
    for env, where in (({}, "no Slurm job"),
                       ({**job, "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "n1"}, "a Slurm job of 1 node(s)"),
                       ({**job, "SLURM_JOB_NUM_NODES": "3", "SLURM_JOB_NODELIST": "n[1-3]"}, "a Slurm job of 3 node(s)"),
                       ({**job, "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "(null)"},
                        "a Slurm job of 2 node(s) whose node list `scontrol show job` did not give")):
        problem = allocation_problem(2, env, "experiments.big.nodes")
        assert problem is not None and problem.startswith(
            "experiments.big.nodes 2: training on several nodes runs inside a Slurm allocation of 2 nodes, and this is "
            f"{where};"), (env, problem)


@pytest.mark.parametrize("offset, n", [(0, 3), (3, 3), (2, 4), (5, 1)])
def test_a_process_s_share_of_a_batch_is_augmented_as_its_images_of_the_whole_batch_are(offset, n):
    """Each training process augments its images of a batch with the boxes and flips the whole batch draws
    (``part_of``): its share equals those images of the batch augmented by one process, from the same seed."""
    import torch

    from finetune.augment import augment_batch

    images = torch.randint(0, 256, (6, 3, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    whole = augment_batch(images, 8, torch.Generator().manual_seed(5))
    share = augment_batch(images[offset:offset + n], 8, torch.Generator().manual_seed(5), part_of=(offset, 6))
    assert torch.equal(share, whole[offset:offset + n])
