import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import trainkit as tk
from trainkit.data import ResumableSampler
from trainkit.errors import UserError


@pytest.mark.parametrize("n,replicas,drop_last", [(10, 1, False), (10, 3, False), (10, 3, True), (7, 2, False)])
def test_order_and_shards_match_distributed_sampler(n, replicas, drop_last):
    for rank in range(replicas):
        ours = ResumableSampler(n, seed=5, num_replicas=replicas, rank=rank, drop_last=drop_last)
        theirs = DistributedSampler(list(range(n)), num_replicas=replicas, rank=rank, seed=5, drop_last=drop_last)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert list(ours) == list(theirs) and len(ours) == len(theirs)
    first, second = ResumableSampler(n, seed=5), ResumableSampler(n, seed=5)
    second.set_epoch(1)
    assert list(first) != list(second)  # the order changes with the epoch ...
    assert sorted(first) == list(range(n))  # ... and is a permutation


def _batches(loader, sampler, epoch, limit=None):
    sampler.set_epoch(epoch)
    out = []
    for (x,) in sampler.track(loader):
        out.append(x.tolist())
        if limit is not None and len(out) == limit:
            break
    return out


def test_mid_epoch_resume_with_prefetching_workers_continues_at_the_next_batch(tmp_path):
    data = TensorDataset(torch.arange(40))

    def loader_for(sampler):
        return DataLoader(data, batch_size=4, sampler=sampler, num_workers=2, prefetch_factor=2)

    straight_sampler = ResumableSampler(len(data), seed=3)
    straight_loader = loader_for(straight_sampler)
    straight = _batches(straight_loader, straight_sampler, 0) + _batches(straight_loader, straight_sampler, 1)

    sampler = ResumableSampler(len(data), seed=3)
    loader = loader_for(sampler)
    before = _batches(loader, sampler, 0)
    before += _batches(loader, sampler, 1, limit=3)  # workers have prefetched further than 3 batches by now
    assert sampler.consumed == 12
    model = torch.nn.Linear(1, 1)
    tk.save_checkpoint(tmp_path / "c.pt", tk.training_state(model=model, epoch=1, sampler=sampler))
    state = torch.load(tmp_path / "c.pt", weights_only=True)

    resumed_sampler = ResumableSampler(len(data), seed=3)
    tk.restore_training_state(state, model=model, sampler=resumed_sampler)
    after = _batches(loader_for(resumed_sampler), resumed_sampler, 1)
    assert before + after == straight
    assert resumed_sampler.consumed_batches(4) == 10


def test_restored_position_applies_to_its_own_epoch_only():
    sampler = ResumableSampler(10, seed=0)
    sampler.load_state_dict({"epoch": 2, "consumed": 4, "num_samples": 10})
    sampler.set_epoch(3)  # the checkpoint's epoch had ended: the next one starts at its beginning
    assert len(list(sampler)) == 10
    sampler.load_state_dict({"epoch": 2, "consumed": 4, "num_samples": 10})
    sampler.set_epoch(2)
    assert list(sampler) == sampler.indices()[4:]
    sampler.set_epoch(2)  # a second set_epoch(2) is a new pass over epoch 2
    assert len(list(sampler)) == 10


def test_mid_epoch_state_refuses_another_data_order_but_epoch_end_allows_it():
    saved = ResumableSampler(10, seed=0, num_replicas=2, rank=0)
    saved.set_epoch(1)
    saved.advance(2)
    with pytest.raises(UserError, match="num_replicas was 2, now 1"):
        ResumableSampler(10, seed=0).load_state_dict(saved.state_dict())
    with pytest.raises(UserError, match="dataset_len"):
        ResumableSampler(12, seed=0, num_replicas=2, rank=0).load_state_dict(saved.state_dict())
    saved.advance(100)  # epoch finished: a new world size is fine
    other = ResumableSampler(10, seed=0)
    other.load_state_dict(saved.state_dict())
    other.set_epoch(2)
    assert len(list(other)) == 10
