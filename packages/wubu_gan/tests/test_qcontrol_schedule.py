"""Controllers that control: exploration ends within the run, Adam's beta1 is never rewritten, phases keep lambda_KL."""
import torch

from wubu_gan.qcontrol import QController, exploration_decay


def test_epsilon_reaches_its_floor_half_way_through_a_recipe_length_run():
    q = QController("gen")
    q.eps_decay = exploration_decay(1000)
    m = {"g_total": 1.0, "d_total": 0.7, "recon": 0.1, "kl": 1.0, "g_adv": 0.7, "lambda_kl": 1e-4, "lr": 1e-3,
         "momentum": 0.9}
    for _ in range(500):
        q.step(m)
    assert q.epsilon <= 0.0501
    assert exploration_decay(100_000) == 0.9995  # never slower than the original's decay


def test_q_actions_never_rewrite_adams_beta1_but_move_sgd_momentum_and_the_lr():
    from wubu_gan.train import apply_scales

    p = torch.nn.Parameter(torch.zeros(2))
    adam = torch.optim.Adam([p], lr=1e-3, betas=(0.9, 0.99))
    apply_scales(adam, 1e-3, {"lrscale": 1.2, "momentumscale": 0.95})
    assert adam.param_groups[0]["betas"] == (0.9, 0.99) and abs(adam.param_groups[0]["lr"] - 1.2e-3) < 1e-12
    sgd = torch.optim.SGD([p], lr=1e-3, momentum=0.9)
    apply_scales(sgd, 1e-3, {"lrscale": 1.0, "momentumscale": 0.95})
    assert abs(sgd.param_groups[0]["momentum"] - 0.855) < 1e-9


def test_every_phase_config_keeps_the_guides_lambda_kl_fixed():
    from importlib import resources

    import yaml

    for name in ("phase1", "phase2a", "phase2b", "phase2c", "phase3", "phase4"):
        data = yaml.safe_load((resources.files("wubu_gan") / "configs" / f"{name}.yaml").read_text())
        assert data["lambda_kl_update_interval"] == 0, name
