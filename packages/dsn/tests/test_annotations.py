"""Real annotation formats (TVSum raw scores, SumMe per-user GT) and the published agreement rows.

Tests on the real files look for ../shared/realdata (beside the repository) and skip when it is absent."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dsn import annotations as A
from dsn import metrics as M
from dsn.cli import main
from dsn.data import Video, load_videos
from trainkit.errors import UserError

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "realdata" / "video_summ"
TVSUM = REAL / "tvsum" / "ydata-tvsum50.mat"
SUMME = REAL / "summe"
needs_tvsum = pytest.mark.skipif(not TVSUM.is_file(), reason=f"real TVSum annotations not present at {TVSUM}")
needs_summe = pytest.mark.skipif(not SUMME.is_dir(), reason=f"real SumMe annotations not present at {SUMME}")


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="dsn")


@needs_tvsum
def test_tvsum_human_row_matches_otani_2019():
    """The paper's human row (Otani et al. CVPR 2019): tau 0.177, rho 0.204, frame level, each annotator
    against each other one. (CA-SUM's [::15] frames give the same three decimals; the CLI test uses them.)"""
    tv = A.read_tvsum_mat(TVSUM)
    assert len(tv) == 50 and {a.n_users for a in tv.values()} == {20}
    assert tv["AwmHb44_ouw"].n_frames == 10597 and tv["AwmHb44_ouw"].user_scores.max() == 5
    human = A.human_rank_agreement(tv, subsample=1)
    assert (round(human["kendall_tau"], 3), round(human["spearman_rho"], 3)) == (0.177, 0.204)


def test_fast_kendall_equals_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    for k1, k2 in ((5, 5), (2, 7), (5, 3000)):
        x = rng.integers(0, k1, 400).astype(float)
        y = rng.integers(0, k2, 400) + 0.5 * x
        assert A.kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    users = rng.integers(1, 6, size=(4, 300)).astype(float)
    tau, rho = A._pairwise_tau_rho(users)
    assert tau[0, 2] == pytest.approx(stats.kendalltau(users[0], users[2]).statistic, abs=1e-12)
    assert rho[1, 3] == pytest.approx(stats.spearmanr(users[1], users[3]).statistic, abs=1e-12)


@needs_tvsum
def test_tvsum_raw_scores_vs_binary_keyshots_h2():
    """Audit H2: tau against the binary keyshots (all dsn could see before) is lower than against raw scores;
    rank_correlation now uses the raw scores when a video carries them."""
    a = A.read_tvsum_mat(TVSUM)["AwmHb44_ouw"]
    picks = np.arange(0, a.n_frames, 15)
    cps = A.uniform_segments(a.n_frames, a.fps)
    v = Video("v", np.zeros((len(picks), 2), np.float32), picks, a.n_frames, cps, cps[:, 1] - cps[:, 0] + 1,
              user_summary=A.user_summaries(a, cps), gtscore=None, frames=None, user_scores=a.user_scores)
    pred = a.user_scores[0][picks]  # annotator 0 as the "method"
    tau_raw, _ = M.rank_correlation(pred, v)
    v_bin = Video(**{**v.__dict__, "user_scores": None})
    tau_bin, _ = M.rank_correlation(pred, v_bin)
    assert M.reference_kind(v) == "raw annotator scores" and M.reference_kind(v_bin) == "binary keyshots"
    assert tau_raw > tau_bin + 0.02  # includes annotator 0 itself (tau 1), so well above the 0.177 average


def test_raw_scores_stored_as_user_summary_are_not_binarised(tmp_path, eccv16_writer):
    """Audit H2: raw 1-5 scores stored under `user_summary` used to be binarised to all ones (tau/rho null)."""
    root = tmp_path / "d"
    h5 = eccv16_writer(root / "x.h5", n_videos=1)
    rng = np.random.default_rng(0)
    with h5py.File(h5, "a") as f:
        n = int(f["video_1/n_frames"][()])
        del f["video_1/user_summary"], f["video_1/gtscore"]
        f["video_1/user_summary"] = rng.integers(1, 6, size=(3, n)).astype(np.float32)
    v = load_videos(root)["video_1"]
    assert v.user_scores is not None and v.user_scores.max() > 1 and v.user_summary is None
    tau, rho = M.rank_correlation(v.user_scores.mean(0)[v.picks], v)
    assert np.isfinite(tau) and np.isfinite(rho)
    users = M.keyshot_users(v)
    assert users.shape == (3, n) and 0 < users.mean() <= 0.15


def test_summe_csv_folder_reads_names_and_drops_exact_copies(tmp_path):
    rng = np.random.default_rng(1)
    a = (rng.random((40, 3)) < 0.15).astype(int) * rng.integers(1, 5, size=(40, 3))
    b = (rng.random((50, 4)) < 0.15).astype(int)
    for name, m in (("v1.csv", a), ("v2.csv", b), ("v3.csv", b)):
        (tmp_path / name).write_text("\ufeff" + "\n".join(",".join(map(str, r)) for r in m) + "\n", encoding="utf-8")
    (tmp_path / "summe_mapping.json").write_text(json.dumps([{"file": "v1.csv", "video": "Air_Force_One", "valid": True},
                                                               {"file": "v2.csv", "video": "Jumps", "valid": True}]))
    sm = A.read_summe(tmp_path)
    assert sorted(sm) == ["Air_Force_One", "Jumps"]  # v3 is a byte-identical copy of v2
    assert sm["Air_Force_One"].user_scores.shape == (3, 40)


def test_summe_gt_mat_folder(tmp_path):
    import scipy.io

    us = np.zeros((30, 2))
    us[3:8, 0] = 1
    us[5:9, 1] = 1
    (tmp_path / "GT").mkdir()
    scipy.io.savemat(tmp_path / "GT" / "Cooking.mat", {"user_score": us, "nFrames": 30})
    sm = A.read_summe(tmp_path)
    a = sm["Cooking"]
    assert a.user_scores.shape == (2, 30)
    # user 0 (5 frames) vs user 1 (4 frames), 3 shared: P 3/5, R 3/4 -> F 66.7 both ways
    loo = A.human_f_loo(sm)
    assert loo["F_max"] == pytest.approx(200 * 0.6 * 0.75 / 1.35)


@needs_summe
def test_summe_real_leave_one_out():
    sm = A.read_summe(SUMME)
    assert len(sm) == 22
    loo = A.human_f_loo(sm)
    assert 45 < loo["F_max"] < 60 and 25 < loo["F_avg"] < 35


def test_predictions_scored_against_annotations(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(1, 6, size=(5, 600)).astype(float)
    anns = {"vidA": A.Annotation("vidA", "tvsum", raw, fps=30.0)}
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"vidA.mp4": raw.mean(0).tolist(), "other": [0.1, 0.2]}))
    res = A.score_predictions(A.read_predictions(preds), anns)
    assert res["unmatched"] == ["other"]
    assert res["mean"]["kendall_tau"] > 0.3 and res["mean"]["F_avg"] > 20
    rnd = A.score_predictions({"vidA": {"scores": rng.random(600)}}, anns)
    assert rnd["mean"]["kendall_tau"] < res["mean"]["kendall_tau"]


@needs_tvsum
@needs_summe
def test_agreement_cli_json():
    r = _cli("agreement", "--tvsum_mat", TVSUM, "--summe", SUMME, "--subsample", 15, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert set(out["human"]) >= {"kendall_tau", "spearman_rho"} and set(out["random"]) >= {"kendall_tau", "spearman_rho"}
    assert round(out["human"]["kendall_tau"], 3) == 0.177 and round(out["human"]["spearman_rho"], 3) == 0.204
    assert abs(out["random"]["kendall_tau"]) < 0.02 and abs(out["random"]["spearman_rho"]) < 0.02
    assert out["summe"]["videos"] == 22


@pytest.mark.parametrize("args, message", [
    (["agreement"], "no annotations given"),
    (["agreement", "--tvsum_mat", "nope.mat"], "TVSum annotation file not found"),
    (["agreement", "--summe", "nope_dir"], "SumMe folder not found"),
])
def test_agreement_bad_input(args, message, tmp_path):
    r = _cli(*args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_agreement_not_a_mat_file(tmp_path):
    p = tmp_path / "x.mat"
    p.write_text("hello")
    r = _cli("agreement", "--tvsum_mat", p)
    assert r.exit_code == 2 and "cannot read as MATLAB v7.3" in r.output


def test_evaluate_takes_real_annotations_as_reference(eccv16_root):
    """`dsn evaluate --tvsum_mat/--summe`: annotations attach by name or unique frame count; tau/rho then use
    the raw scores and F their keyshots over the video's own shots."""
    from dsn.evaluate import attach_annotations, summary_metrics

    videos = list(load_videos(eccv16_root).values())
    rng = np.random.default_rng(0)
    v1, v2 = videos[0], videos[1]
    raw = rng.integers(1, 6, size=(4, v1.n_frames)).astype(float)
    anns = {"clip 1": A.Annotation("clip 1", "tvsum", raw, fps=30.0),  # by video_name
            "Other": A.Annotation("Other", "summe", (rng.random((3, v2.n_frames)) < 0.15).astype(float))}  # by length
    if sum(v.n_frames == v2.n_frames for v in videos) != 1:
        pytest.skip("fixture has two videos of the same length")
    note = attach_annotations(videos, anns)
    assert "video_1=clip 1" in note and "video_2=Other" in note
    assert v1.user_scores is not None and v1.user_summary is None and v1.gtscore is None
    assert v2.user_summary.shape == (3, v2.n_frames) and v2.user_scores is None
    good = raw.mean(0)[v1.picks]
    m = summary_metrics(v1, good, np.array([0, 5]), proportion=0.15, f_mode="avg", ms_swd=False)
    assert m["kendall_tau"] > 0.3 and m["F"] is not None
    with pytest.raises(Exception, match="none of the"):
        attach_annotations(videos[2:], {"zzz": A.Annotation("zzz", "summe", np.ones((2, 7)))})


def test_summe_users_by_frames_csv_is_transposed_not_hung(tmp_path):
    """aud21-1: user_summaries/SumMe CSVs are users x frames (15 x 4494). Read as frames x users they gave
    thousands of "users" and the leave-one-out loop never ended; now they are transposed with a warning."""
    rng = np.random.default_rng(2)
    m = (rng.random((3, 400)) < 0.15).astype(int)  # 3 users x 400 frames, as stored
    (tmp_path / "v.csv").write_text("\n".join(",".join(map(str, r)) for r in m) + "\n")
    sm = A.read_summe(tmp_path)
    assert sm["v"].user_scores.shape == (3, 400)
    np.testing.assert_array_equal(sm["v"].user_scores, m)
    assert A.human_f_loo(sm)["videos"] == 1


def test_summe_npz_file_given_directly(tmp_path):
    """aud21-2: the converted summe_user_score.npz is accepted as the --summe argument itself."""
    us = (np.random.default_rng(3).random((60, 4)) < 0.2).astype(float)  # frames x users
    np.savez(tmp_path / "summe_user_score.npz", **{"Jumps/user_score": us})
    r = _cli("agreement", "--summe", tmp_path / "summe_user_score.npz", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["summe"]["videos"] == 1


@pytest.mark.parametrize("name, content", [("GT/bad.mat", "garbage\n"), ("bad.npz", "garbage\n")])
def test_summe_corrupt_file_is_a_one_line_error(tmp_path, name, content):
    """aud21-3: a corrupt SumMe GT .mat gave scipy's MatReadError traceback (rc 1); now rc 2 naming the file."""
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_text(content)
    r = _cli("agreement", "--summe", tmp_path, "--json")
    assert r.exit_code == 2 and "Traceback" not in r.output and "bad." in r.output, r.output


def test_predictions_matching_nothing_is_an_error(tmp_path):
    """aud21-5: predictions that match no annotated video gave exit 0 with all-null means."""
    anns = {"vidA": A.Annotation("vidA", "tvsum", np.ones((2, 50)), fps=30.0)}
    with pytest.raises(UserError, match="none of the 1 predicted videos matches"):
        A.score_predictions({"nomatch": {"scores": np.zeros(7)}}, anns)
