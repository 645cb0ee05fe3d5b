"""How an epoch is cut into batches, checked without data (tests/test_training.py needs Fashion-MNIST)."""

import torch

from finetune.training import _smallest_batch, epoch_batches


def test_the_smallest_batch_checked_is_the_smallest_batch_an_epoch_is_cut_into():
    """The BatchNorm and last-batch checks read the epoch's smallest batch without cutting one: for every size and
    batch size, it is the smallest of the batches epoch_batches cuts (a lone last example joining the one before)."""
    for batch_size in range(1, 9):
        for n in range(1, 4 * batch_size + 3):
            batches = epoch_batches(torch.arange(n), batch_size)
            assert torch.equal(torch.cat(batches), torch.arange(n))
            assert _smallest_batch(n, batch_size) == min(len(b) for b in batches), (n, batch_size)
