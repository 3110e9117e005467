"""Synthetic UI action sequences ``[x, y, press]`` that look like real pointer/touch input.

Each sequence is one pointer trace sampled at ``SAMPLE_RATE_HZ``: a chain of gestures that
starts where the previous one ended, until ``seq_len`` steps are filled. The kinematics follow
what is known about human aimed movements rather than random noise:

- point-to-point moves use the minimum-jerk profile s(tau) = 10tau^3 - 15tau^4 + 6tau^5
  (Flash & Hogan), so speed is bell-shaped with its peak mid-movement;
- paths are quadratic Bezier curves whose control point is pushed sideways, so moves bow;
- move durations follow Fitts' law, MT = a + b * log2(D / W + 1);
- presses last a plausible number of steps for their gesture (tap, long press, ...);
- idle gaps hold the pointer still; every position carries small sensor jitter.

The gesture mix (probability of each gesture being the next one) is ``GESTURE_MIX``.
Everything is deterministic given the seed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trainkit.errors import UserError
from trainkit.runsafety import check_replaceable, swap_in, write_output_marker

SAMPLE_RATE_HZ = 30.0

# Probability of each gesture being the next one in a trace. Taps dominate real UI use.
GESTURE_MIX: dict[str, float] = {
    "tap": 0.30,
    "double_tap": 0.10,
    "long_press": 0.12,
    "swipe": 0.18,
    "drag": 0.12,
    "idle": 0.18,
}


@dataclass(frozen=True)
class GeneratorSettings:
    seq_len: int = 64
    sample_rate_hz: float = SAMPLE_RATE_HZ
    # Fitts' law, Shannon form, in seconds: MT = a + b * log2(D / W + 1). Values are typical of
    # mouse/touch pointing studies (a ~ 0.1-0.2 s, b ~ 0.1-0.2 s/bit).
    fitts_a_s: float = 0.12
    fitts_b_s: float = 0.12
    target_width_range: tuple[float, float] = (0.02, 0.12)
    # Sideways offset of the Bezier control point as a fraction of the move length (std).
    curvature_std: float = 0.18
    jitter_std: float = 0.0015
    tap_steps: tuple[int, int] = (2, 4)            # 67-133 ms at 30 Hz
    double_tap_gap_steps: tuple[int, int] = (2, 4)
    long_press_steps: tuple[int, int] = (12, 24)   # 0.4-0.8 s
    swipe_steps: tuple[int, int] = (5, 10)         # fast flick
    swipe_length: tuple[float, float] = (0.2, 0.55)
    idle_steps: tuple[int, int] = (3, 12)
    margin: float = 0.05
    gesture_mix: dict[str, float] = field(default_factory=lambda: dict(GESTURE_MIX))


def minimum_jerk(n: int) -> np.ndarray:
    """Fraction of the path covered at ``n`` evenly spaced instants from start to end (inclusive)."""
    tau = np.linspace(0.0, 1.0, n)
    return 10 * tau**3 - 15 * tau**4 + 6 * tau**5


def fitts_steps(distance: float, width: float, s: GeneratorSettings) -> int:
    seconds = s.fitts_a_s + s.fitts_b_s * math.log2(distance / width + 1.0)
    return max(3, int(round(seconds * s.sample_rate_hz)))


def _curved_path(p0: np.ndarray, p1: np.ndarray, n: int, rng: np.random.Generator,
                 s: GeneratorSettings) -> np.ndarray:
    """Positions of a minimum-jerk move along a bowed (quadratic Bezier) path, ``n`` steps after p0."""
    d = p1 - p0
    length = float(np.hypot(*d))
    normal = np.array([-d[1], d[0]]) / max(length, 1e-9)
    ctrl = (p0 + p1) / 2 + normal * rng.normal(0.0, s.curvature_std) * length
    u = minimum_jerk(n + 1)[1:, None]
    return (1 - u) ** 2 * p0 + 2 * (1 - u) * u * ctrl + u**2 * p1


def _random_target(p: np.ndarray, rng: np.random.Generator, s: GeneratorSettings,
                   length: tuple[float, float] | None = None) -> np.ndarray:
    lo, hi = s.margin, 1.0 - s.margin
    for _ in range(20):
        if length is None:
            q = rng.uniform(lo, hi, size=2)
        else:
            # Swipes are mostly axis-aligned flicks (scrolling, paging) with some slant.
            axis = rng.integers(2)
            angle = axis * math.pi / 2 + rng.choice([0.0, math.pi]) + rng.normal(0.0, 0.2)
            q = p + rng.uniform(*length) * np.array([math.cos(angle), math.sin(angle)])
        if np.all(q >= lo) and np.all(q <= hi) and np.hypot(*(q - p)) > 0.03:
            return q
    return rng.uniform(lo, hi, size=2)


def generate_sequence(rng: np.random.Generator, s: GeneratorSettings | None = None,
                      return_events: bool = False):
    """One trace ``[seq_len, 3]`` float32; with ``return_events`` also ``[(kind, start, end)]``.

    Event kinds: ``move`` (pointer up, aimed), ``press`` (a contact: tap, long press), ``stroke``
    (pointer down while moving: swipe, drag), ``idle``, ``gap`` (between the taps of a double tap).
    """
    s = s or GeneratorSettings()
    L = s.seq_len
    xy: list[np.ndarray] = []
    press: list[np.ndarray] = []
    events: list[tuple[str, int, int]] = []
    p = rng.uniform(0.15, 0.85, size=2)
    kinds = list(s.gesture_mix)
    probs = np.array([s.gesture_mix[k] for k in kinds], dtype=float)
    probs /= probs.sum()

    def emit(kind: str, pos: np.ndarray, pressed: int) -> None:
        start = sum(len(a) for a in xy)
        xy.append(pos)
        press.append(np.full(len(pos), pressed, dtype=np.float32))
        events.append((kind, start, start + len(pos)))

    def hold(n: int) -> np.ndarray:
        return np.repeat(p[None], n, axis=0)

    def aim() -> None:
        nonlocal p
        width = rng.uniform(*s.target_width_range)
        q = _random_target(p, rng, s)
        emit("move", _curved_path(p, q, fitts_steps(float(np.hypot(*(q - p))), width, s), rng, s), 0)
        p = q

    total = 0
    while total < L:
        kind = rng.choice(kinds, p=probs)
        if kind == "idle":
            emit("idle", hold(int(rng.integers(s.idle_steps[0], s.idle_steps[1] + 1))), 0)
        elif kind in ("tap", "double_tap", "long_press"):
            aim()
            lo_hi = s.long_press_steps if kind == "long_press" else s.tap_steps
            emit("press", hold(int(rng.integers(lo_hi[0], lo_hi[1] + 1))), 1)
            if kind == "double_tap":
                emit("gap", hold(int(rng.integers(s.double_tap_gap_steps[0], s.double_tap_gap_steps[1] + 1))), 0)
                emit("press", hold(int(rng.integers(s.tap_steps[0], s.tap_steps[1] + 1))), 1)
        elif kind == "swipe":
            q = _random_target(p, rng, s, length=s.swipe_length)
            n = int(rng.integers(s.swipe_steps[0], s.swipe_steps[1] + 1))
            # The finger lands, flicks, and lifts: contact from the first to the last sample.
            emit("stroke", np.concatenate([p[None], _curved_path(p, q, n, rng, s)]), 1)
            p = q
        else:  # drag: aim at an object, press, carry it to a target at a Fitts' pace, release
            aim()
            q = _random_target(p, rng, s)
            width = rng.uniform(*s.target_width_range)
            n = fitts_steps(float(np.hypot(*(q - p))), width, s) + 2  # carrying is slower
            emit("stroke", np.concatenate([p[None], _curved_path(p, q, n, rng, s)]), 1)
            p = q
        total = sum(len(a) for a in xy)
        if total < L:
            # A release is always followed by at least one pointer-up sample, so consecutive
            # contacts stay separable (as on a real touch screen).
            if press[-1][-1] == 1:
                emit("idle", hold(1), 0)
                total += 1

    pos = np.concatenate(xy)[:L]
    pos = pos + rng.normal(0.0, s.jitter_std, size=pos.shape)
    out = np.empty((L, 3), dtype=np.float32)
    out[:, :2] = np.clip(pos, 0.0, 1.0)
    out[:, 2] = np.concatenate(press)[:L]
    if not return_events:
        return out
    clipped = [(k, a, min(b, L)) for k, a, b in events if a < L]
    return out, clipped


# Split -> spawn key of its random stream. Train uses the plain seed (its data is what it always was);
# val uses a child stream of the same seed, so no seed's val set is ever another seed's train set
# (with "seed + 1" for val, --seed 1's train set was --seed 0's val set).
SPLIT_STREAMS = {"train": (), "val": (1,)}


def split_seed(seed: int, split: str) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=SPLIT_STREAMS[split])


def generate_sequences(n: int, seed: int | np.random.SeedSequence = 0,
                       settings: GeneratorSettings | None = None) -> np.ndarray:
    """``n`` traces as ``float32 [n, seq_len, 3]``, deterministic in ``seed`` (an int or a SeedSequence)."""
    rng = np.random.default_rng(seed)
    s = settings or GeneratorSettings()
    if n == 0:
        return np.zeros((0, s.seq_len, 3), dtype=np.float32)
    return np.stack([generate_sequence(rng, s) for _ in range(n)])


def generate_click_dataset(out_dir: str | Path, num_train: int = 5000, num_val: int = 1000,
                           seq_len: int = 64, seed: int = 0,
                           sequences_per_file: int = 1000, replace: bool = False) -> Path:
    """Write ``out_dir/{train,val}/part*_actions.npy`` (float32 ``[N*seq_len, 3]``) + ``metadata.json``.

    Train and val come from independent random streams of ``seed`` (``split_seed``), so val is held
    out and differs from every seed's train set. A non-empty ``out_dir`` is refused unless
    ``replace``; then it is replaced whole (only if it holds nothing but an earlier dataset's
    ``train/`` and ``val/``), so no stale file from an earlier generation survives. The new data is
    written beside the target and renamed into place. Returns ``out_dir``.
    """
    out = Path(out_dir)
    existing = _check_target(out, replace)
    tmp = out.resolve().with_name(f".{out.resolve().name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_dataset(tmp, num_train, num_val, seq_len, seed, sequences_per_file)
        write_output_marker(tmp, "action-ddim generate-data")
        if existing:
            swap_in(tmp, out)
        else:
            if out.is_dir():
                out.rmdir()  # empty
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_target(out: Path, replace: bool) -> bool:
    """True when ``out`` holds an earlier dataset to replace; a UserError for anything unsafe."""
    if out.exists() and not out.is_dir():
        raise UserError("output path is a file", f"--out_dir {out}", "a new or empty directory")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not replace:
        raise UserError("output directory is not empty", f"--out_dir {out}",
                        "a new or empty directory, or --replace to replace the dataset in it whole")
    # trainkit's rule (audit A1): only a folder generate-data wrote, never ., ~, / or an ancestor of the cwd. A
    # "train/ and val/ only" rule deleted users' real data in the documented layout. Datasets written before the
    # marker existed are recognised by both splits' metadata.json naming this generator.
    legacy = all(p.name in ("train", "val") for p in out.iterdir()) and all(
        _names_this_generator(out / split / "metadata.json") and
        all(f.name == "metadata.json" or (f.name.startswith("part") and f.name.endswith("_actions.npy"))
            for f in (out / split).iterdir())
        for split in ("train", "val"))  # exactly the files generate-data writes, nothing else
    check_replaceable(out, flag="--replace", legacy_markers=("train",) if legacy else ())
    return True


def _names_this_generator(meta: Path) -> bool:
    try:
        return json.loads(meta.read_text()).get("generator") == "action_ddim.augmentation.generate_click_dataset"
    except (OSError, ValueError, AttributeError):
        return False


def _write_dataset(out: Path, num_train: int, num_val: int, seq_len: int, seed: int, sequences_per_file: int) -> None:
    settings = GeneratorSettings(seq_len=seq_len)
    for split, n in (("train", num_train), ("val", num_val)):
        d = out / split
        d.mkdir(parents=True, exist_ok=True)
        data = generate_sequences(n, split_seed(seed, split), settings)
        for i, start in enumerate(range(0, n, sequences_per_file)):
            chunk = data[start:start + sequences_per_file].reshape(-1, 3)
            np.save(d / f"part{i:03d}_actions.npy", np.ascontiguousarray(chunk, dtype=np.float32))
        meta = {
            "seq_len": seq_len,
            "num_sequences": n,
            "split": split,
            "seed": seed,
            "stream": f"numpy SeedSequence({seed}, spawn_key={list(SPLIT_STREAMS[split])})",
            "generator": "action_ddim.augmentation.generate_click_dataset",
            "settings": asdict(settings),
        }
        (d / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
