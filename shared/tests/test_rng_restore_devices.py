"""restore_rng_state on a machine with fewer GPUs than the one that saved (CUDA faked: CPU-only CI)."""
import torch

from trainkit import checkpoint


def test_cuda_rng_states_beyond_the_visible_gpus_are_dropped(monkeypatch):
    got = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def set_all(states):  # the real one calls set_rng_state(state, i) per index: i >= device_count raises
        assert len(states) <= 1, "invalid device ordinal"
        got.extend(states)

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]  # 8 GPUs when saving
    checkpoint.restore_rng_state({"torch": torch.get_rng_state(), "cuda": saved})
    assert len(got) == 1 and torch.equal(got[0], saved[0])
