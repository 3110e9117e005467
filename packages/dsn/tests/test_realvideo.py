"""Real-video input (audit H3, M1, M2, M6): container timestamps, rotation, KTS defaults, backbone input.

Clips are made here with PyAV; the two tests on the real rotation-metadata clips look for
../shared/realdata/videos and skip when it is absent."""
from __future__ import annotations

import re
import sys
import types
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from dsn import features as Fe
from dsn.kts import kts_segments

REAL_VIDEOS = Path(__file__).resolve().parents[3] / ".." / "shared" / "realdata" / "videos"


def write_frames(path, frames, pts, fps=15):
    """Frames with explicit timestamps (pts in 1/fps units): gaps make a variable-frame-rate file."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height = frames[0].shape[1], frames[0].shape[0]
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = Fraction(1, fps)
        for img, p in zip(frames, pts):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = int(p)
            f.time_base = Fraction(1, fps)
            for packet in s.encode(f):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return Path(path)


def test_variable_frame_rate_keeps_the_container_timeline(tmp_path):
    """Audit H3: 10 coded frames spread over 30 s at a nominal 15 fps. Counting decoded frames put the
    keyframe times at 0..0.6 s; the timestamps put them where they are."""
    pts = np.array([0, 11, 17, 24, 90, 150, 226, 300, 380, 443])
    frames = [np.full((32, 48, 3), 20 * i, np.uint8) for i in range(len(pts))]
    path = write_frames(tmp_path / "vfr.mp4", frames, pts)
    d = Fe.decode_video(path, sample_fps=2.0)
    assert d.n_coded == 10 and d.fps == pytest.approx(15.0)
    assert d.n_frames == 444  # the grid spans 29.6 s, not 10 frames
    stride = round(15 / 2)
    np.testing.assert_array_equal(d.picks, np.arange(0, 444, stride))
    # The picture shown at 15.0 s (grid frame 225) is the frame stamped 150 (10 s), not a later one.
    k = int(np.searchsorted(d.picks, 224))
    assert d.picks[k] == 224 and abs(int(d.thumbs[k].mean()) - 100) <= 3
    assert d.picks[-1] == 440 and d.times[-1] == pytest.approx(440 / 15)


@pytest.mark.skipif(not (REAL_VIDEOS / "decord" / "video_90.mov").is_file(), reason="real rotation clips absent")
def test_rotation_metadata_is_applied_real_clip():
    """Audit M1: decord's video_90.mov is stored 568x320 with a -90 degree display matrix."""
    d = Fe.decode_video(REAL_VIDEOS / "decord" / "video_90.mov")
    assert d.rotation == 270 and (d.width, d.height) == (320, 568)
    full = Fe.grab_frames(REAL_VIDEOS / "decord" / "video_90.mov", [0], d.fps)[0]
    assert full.shape == (568, 320, 3)
    d0 = Fe.decode_video(REAL_VIDEOS / "decord" / "video_0.mov")
    assert d0.rotation == 0 and (d0.width, d0.height) == (568, 320)


def test_rotation_direction():
    class F:  # a stand-in frame: a stored 2x3 picture with a -90 degree display matrix (clockwise turn)
        rotation = -90.0

        def reformat(self, **_):
            return self

        def to_ndarray(self):
            return np.arange(6, dtype=np.uint8).reshape(2, 3, 1).repeat(3, axis=2)

    rot = Fe._rotation(F())
    out = Fe._rgb(F(), rot)[..., 0]
    # ffmpeg's autorotate turns this clockwise ("transpose=clock"): the stored bottom-left goes top-left.
    np.testing.assert_array_equal(out, [[3, 0], [4, 1], [5, 2]])


def write_shots(path, seed=0, n_shots=4, shot_s=4.0, fps=24, w=160, h=96):
    """Shots of panning smooth colour textures with sensor noise; a cut every shot_s seconds."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_shots):
        base = gaussian_filter(rng.random((h * 2, w * 3, 3)), sigma=(8, 8, 0))
        tex = np.clip((base - base.min()) / (np.ptp(base) + 1e-9) * (rng.random(3) * 0.5 + 0.5) * 255, 0, 255)
        n = int(shot_s * fps)
        for i in range(n):
            x, y = int(i * (w * 2 - 1) / n), int(h * 0.5 * np.sin(i / n * np.pi))
            frames.append(np.clip(tex[y : y + h, x : x + w] + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8))
    return write_frames(path, frames, np.arange(len(frames)), fps=fps)


def test_kts_default_finds_the_cuts_of_a_real_like_clip(tmp_path):
    """Audit M2: panning textured shots, cuts at 4, 8 and 12 s (steps 8, 16, 24 at 2 steps/s). The
    synthetic-tuned vmax 1.5 finds none of them; the real-video default finds all three."""
    path = write_shots(tmp_path / "shots.mp4")
    v = Fe.video_from_file(path)
    starts = v.change_points[:, 0]
    np.testing.assert_array_equal(starts, [0, 96, 192, 288])
    assert kts_segments(v.features, vmax=1.5).size == 0


def test_backbone_input_keeps_aspect_and_full_resolution(tmp_path):
    """Audit M6: the backbone saw 64x64 squashed thumbnails. Now: short side to S, centre crop. A 128x64
    clip whose left quarter is red gives an all-blue centre crop (a squashed thumbnail is 1/4 red)."""
    img = np.zeros((64, 128, 3), np.uint8)
    img[:] = (0, 0, 255)
    img[:, :32] = (255, 0, 0)
    path = write_frames(tmp_path / "wide.mp4", [img] * 4, np.arange(4))
    d = Fe.decode_video(path, thumb_size=16, backbone_size=32)
    assert d.backbone.shape == (1, 32, 32, 3)
    assert d.backbone[0, :, :, 0].max() < 60 and d.backbone[0, :, :, 2].min() > 190
    assert (d.thumbs[0, :, :, 0] > 128).mean() == pytest.approx(0.25, abs=0.07)


def test_googlenet_gets_its_input_transform(tmp_path, monkeypatch):
    """Audit M6: torchvision's ImageNet GoogLeNet needs transform_input=True (torchvision itself sets it
    when it loads those weights). A stand-in torchvision records how dsn builds the model."""
    import torch

    seen = {}

    class Net(torch.nn.Module):
        def __init__(self, **kw):
            super().__init__()
            seen.update(kw)
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            seen["input"] = tuple(x.shape)
            return x.mean(dim=(2, 3))

    models = types.SimpleNamespace(googlenet=lambda weights=None, **kw: Net(**kw))
    fake = types.ModuleType("torchvision")
    fake.models = models
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    torch.save(Net().state_dict(), tmp_path / "checkpoints" / "googlenet-c00.pth")
    seen.clear()
    out = Fe.backbone_features(np.zeros((2, 224, 224, 3), np.uint8), "googlenet")
    assert seen["transform_input"] is True and seen["aux_logits"] is False
    assert seen["input"] == (2, 3, 224, 224) and out.shape == (2, 3)


def test_readme_checkpoint_snippet_names_a_file_a_guide_run_keeps():
    """Audit M5: the snippet named dsn_checkpoint_ep10.pt, which keep_last 3 prunes in a 20-epoch run."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    names = re.findall(r'torch\.load\("runs/dsn_advanced_v1/([^"]+)"\)', readme)
    assert names and all(n in ("best.pt", "latest.pt") or n in {f"dsn_checkpoint_ep{e}.pt" for e in (18, 19, 20)}
                         for n in names)


def test_backbone_without_cached_weights_falls_back_with_a_log(tmp_path, monkeypatch, caplog, video_writer):
    """Item 4: --backbone googlenet uses pool5 only when the weights are cached; otherwise a logged fallback."""
    import logging

    import torch

    from dsn.data import load_videos
    from trainkit.errors import UserError

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    clip = video_writer(tmp_path / "c.mp4", n_frames=30)
    with caplog.at_level(logging.WARNING, logger="dsn.features"):
        root = Fe.extract_features([clip], tmp_path / "ds", backbone="googlenet")
    assert "using the weights-free features" in caplog.text
    (v,) = load_videos(root).values()
    assert v.features.shape[1] == Fe.FEATURE_DIM
    with pytest.raises(UserError, match="unknown backbone"):
        Fe.resolve_backbone("vgg99")


@pytest.fixture(scope="module")
def real_dim_checkpoint(tmp_path_factory):
    """An (untrained) advanced model on the real-video feature size, saved in dsn's checkpoint format."""
    import torch

    from dsn import DSNConfig
    from dsn.model import build_model

    cfg = DSNConfig(model_type="advanced", in_dim=Fe.FEATURE_DIM, enc_hidden=16, num_attn_heads=2,
                    num_attn_layers=1, num_scales=1)
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "dsn_checkpoint_ep1.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "model_type": "advanced",
                "train_config": {"budget_ratio": 0.06}}, path)
    return path


def test_summarize_short_clip_covers_shots_and_time_with_source_aspect_and_skim(tmp_path, real_dim_checkpoint):
    """Item 3: a 10-s, 160x96 clip with a cut at 5 s. Before: 21 steps at a 6 % budget gave 1 keyframe,
    squashed square 64-px thumbnails, no skim."""
    import json

    import av

    from dsn.summarize import summarize

    clip = write_shots(tmp_path / "two.mp4", n_shots=2, shot_s=5.0, fps=24)
    res = summarize(real_dim_checkpoint, tmp_path / "out", video=str(clip), skim="skim.mp4")
    rec = json.loads((tmp_path / "out" / "keyframes.json").read_text())
    assert rec["n_shots"] == 2 and rec["duration_s"] == pytest.approx(10.0, abs=0.1)
    assert len(rec["keyframe_steps"]) >= 2
    assert set(rec["keyframe_shots"]) == {0, 1}
    assert set((np.asarray(rec["keyframe_times_s"]) // 5).astype(int)) == {0, 1}
    assert rec["thumbnail"]["width"] == 160 and rec["thumbnail"]["height"] == 96
    assert (tmp_path / "out" / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"
    with av.open(res["skim"]) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        assert (s.width, s.height) == (160, 96) and 0 < n <= 24 * 2 * len(rec["keyframe_steps"]) + 1
    from dsn.summarize import write_skim

    gif = write_skim(clip, tmp_path / "s.gif", [tuple(r) for r in rec["skim"]["frame_ranges"]], rec["fps"])
    assert gif.read_bytes()[:3] == b"GIF"


def test_summarize_sub_second_clip(tmp_path, real_dim_checkpoint):
    """Clips down to a few frames (the real set has 0.1-0.2 s ones) give a summary, not an error."""
    import json

    from dsn.summarize import summarize

    frames = [np.full((40, 60, 3), 40 * i, np.uint8) for i in range(4)]
    clip = write_frames(tmp_path / "tiny.mp4", frames, np.arange(4), fps=30)
    summarize(real_dim_checkpoint, tmp_path / "out", video=str(clip))
    rec = json.loads((tmp_path / "out" / "keyframes.json").read_text())
    assert rec["n_steps"] == 4 and len(rec["keyframe_steps"]) >= 1 and rec["thumbnail"]["aspect"] == 1.5


def test_kts_vmax_flag_on_extract_features(tmp_path):
    """`--kts_vmax` reaches shot detection: the made clip's three cuts with the real-video default (0.7),
    none with the synthetic data's 1.5; a non-positive value is a one-line usage error (exit 2)."""
    from click.testing import CliRunner

    from dsn.cli import main
    from dsn.data import load_videos

    path = write_shots(tmp_path / "shots.mp4")
    runner = CliRunner()
    starts = {}
    for vmax in (None, "1.5"):
        out = tmp_path / f"ds_{vmax}"
        result = runner.invoke(main, ["extract-features", "--videos", str(path), "--out", str(out),
                                      *(["--kts_vmax", vmax] if vmax else [])])
        assert result.exit_code == 0, result.output
        (v,) = load_videos(out).values()
        starts[vmax] = v.change_points[:, 0].tolist()
    assert starts[None] == [0, 96, 192, 288] and starts["1.5"] == [0]
    for cmd in (["extract-features", "--videos", str(path), "--out", str(tmp_path / "bad")],
                ["summarize", "--checkpoint", "x.pt", "--video", str(path), "--out", str(tmp_path / "bad")]):
        result = runner.invoke(main, [*cmd, "--kts_vmax", "0"])
        assert result.exit_code == 2 and "--kts_vmax" in result.output
    assert not (tmp_path / "bad").exists()


def test_skim_of_a_variable_frame_rate_file_keeps_real_time(tmp_path):
    """aud21-6: the skim wrote each decoded frame once at the nominal rate, so a VFR file's skim played its
    segments ~7x too fast. Now a frame repeats until the next timestamp: grid frames 0..29 (2 s at 15 fps)
    give 30 frames, and frame 11..16 of the output still show coded frame 1 (pts 11)."""
    from dsn.summarize import write_skim

    pts = np.array([0, 11, 17, 24, 90])
    frames = [np.full((32, 48, 3), 40 * i, np.uint8) for i in range(len(pts))]
    path = write_frames(tmp_path / "vfr.mp4", frames, pts)
    out = write_skim(path, tmp_path / "skim.mp4", [(0, 29)], 15.0)
    with av.open(str(out)) as c:
        got = [f.to_ndarray(format="rgb24")[..., 0].mean() for f in c.decode(video=0)]
    assert len(got) == 30
    assert abs(got[12] - 40) < 8 and abs(got[20] - 80) < 8 and abs(got[29] - 120) < 8
