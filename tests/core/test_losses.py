"""Every loss against values computed by hand (see the comment on each expected number)."""

import math

import pytest
import torch

from bapo.core.losses import (PAIRWISE_LOSSES, LossConfig, PairLogps, base_anchor, cdpo_loss, dpo_loss, hinge_loss,
                              ipo_loss, nll_loss, preference_loss, robust_loss, simpo_loss)

T = torch.tensor


def close(a, b, tol=1e-6):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol), (a, b)


def test_dpo_by_hand():
    # beta * (1 - (-1)) = 1 with beta 0.5: -log sigmoid(1) = log(1 + e^-1)
    close(dpo_loss(T([1.0]), T([-1.0]), 0.5), [math.log1p(math.exp(-1))])
    # no preference learned yet: log 2
    close(dpo_loss(T([0.3]), T([0.3]), 0.1), [math.log(2)])


def test_cdpo_and_robust_by_hand():
    a, b = math.log1p(math.exp(-1)), math.log1p(math.e)  # -log s(1), -log s(-1)
    close(cdpo_loss(T([1.0]), T([-1.0]), 0.5, 0.1), [0.9 * a + 0.1 * b])
    close(robust_loss(T([1.0]), T([-1.0]), 0.5, 0.1), [(0.9 * a - 0.1 * b) / 0.8])
    # without label noise both are DPO
    close(cdpo_loss(T([1.0]), T([-1.0]), 0.5, 0.0), dpo_loss(T([1.0]), T([-1.0]), 0.5))
    close(robust_loss(T([1.0]), T([-1.0]), 0.5, 0.0), dpo_loss(T([1.0]), T([-1.0]), 0.5))


def test_hinge_ipo_simpo_by_hand():
    close(hinge_loss(T([1.0, 0.5]), T([-1.0, 0.0]), 0.5), [0.0, 0.75])  # 1 - 0.5*2 = 0; 1 - 0.5*0.5
    close(ipo_loss(T([0.2]), T([-0.1]), 0.5), [(0.3 - 1.0) ** 2])  # target 1/(2*0.5) = 1
    close(simpo_loss(T([-1.0]), T([-1.2]), 2.0, 0.5), [math.log1p(math.exp(0.1))])  # -log s(2*0.2 - 0.5)


def test_nll_is_token_weighted_like_cross_entropy():
    per_pair = nll_loss(T([-4.0, -6.0]), T([2.0, 4.0]))
    close(per_pair.mean(), 10 / 6)


def test_anchor_shapes_by_hand():
    pol, ref = T([-10.0, -5.0]), T([-8.0, -6.0])  # gaps ref - pol = [2, -1]
    close(base_anchor(pol, ref, "hinge"), [2.0, 0.0])
    close(base_anchor(pol, ref, "abs"), [2.0, 1.0])
    close(base_anchor(pol, ref, "squared"), [4.0, 1.0])
    # several base responses per prompt are averaged
    close(base_anchor(T([[-10.0, -5.0]]), T([[-8.0, -6.0]]), "hinge"), [1.0])
    with pytest.raises(ValueError):
        base_anchor(pol, ref, "cubic")


def test_hinge_anchor_gradient_vanishes_at_or_above_reference():
    ref = T([-5.0, -5.0, -5.0])
    pol = T([-6.0, -5.0, -4.0], requires_grad=True)  # below, equal, above the reference
    base_anchor(pol, ref, "hinge").sum().backward()
    close(pol.grad, [-1.0, 0.0, 0.0])  # only the one below is pushed up
    pol.grad = None
    base_anchor(pol, ref, "abs").sum().backward()
    close(pol.grad[2], 1.0)  # the two-sided variant would pull the one above back down


def _pairs(**kw):
    base = dict(chosen=T([-10.0, -12.0]), rejected=T([-11.0, -9.0]), ref_chosen=T([-10.5, -12.0]),
                ref_rejected=T([-10.5, -10.0]), chosen_len=T([4.0, 6.0]), rejected_len=T([5.0, 3.0]))
    base.update(kw)
    return PairLogps(**base)


def test_preference_loss_combines_dpo_nll_and_anchor():
    p = _pairs(base=T([[-20.0], [-14.0]]), ref_base=T([[-18.0], [-15.0]]), base_len=T([[10.0], [7.0]]))
    cfg = LossConfig(method="bapo", beta=0.1, anchor_lambda=2.0, rpo_alpha=0.5)
    loss, m = preference_loss(p, cfg)
    # log-ratios: chosen [0.5, 0], rejected [-0.5, 1] -> deltas [1, -1]
    dpo = (math.log1p(math.exp(-0.1)) + math.log1p(math.exp(0.1))) / 2
    nll = 22 / 10  # (10 + 12) / (4 + 6)
    anchor = (2.0 + 0.0) / 2  # gaps [2, -1]
    close(loss, dpo + 0.5 * nll + 2.0 * anchor, 1e-5)
    close(m["rewards/margins"], 0.0)  # 0.1 * mean([1, -1])
    close(m["rewards/accuracies"], 0.5)
    close(m["anchor/gap"], 0.5)
    close(m["loss/anchor"], 1.0)


def test_anchor_per_token_mean_and_plain_dpo_ignores_anchor():
    p = _pairs(base=T([[-20.0], [-14.0]]), ref_base=T([[-18.0], [-15.0]]), base_len=T([[10.0], [7.0]]))
    loss, m = preference_loss(p, LossConfig(method="bapo", anchor_reduction="mean", anchor_lambda=1.0))
    close(m["loss/anchor"], (0.2 + 0.0) / 2)  # per-token gaps [2/10, -1/7]
    dpo_only, m2 = preference_loss(p, LossConfig(method="dpo"))
    assert "loss/anchor" not in m2 and "anchor/gap" in m2  # the gap is still reported for DPO
    close(loss - dpo_only, 0.1)


@pytest.mark.parametrize("name", sorted(PAIRWISE_LOSSES))
def test_every_registered_loss_prefers_the_chosen_side(name):
    cfg = LossConfig(method=name, beta=0.5)
    good = _pairs(chosen=T([-9.0, -11.0]), rejected=T([-12.0, -12.0]))
    bad = _pairs(chosen=T([-12.0, -13.0]), rejected=T([-9.0, -8.0]))
    assert preference_loss(good, cfg)[0] < preference_loss(bad, cfg)[0]


def test_unknown_method_is_a_config_error():
    from bapo.errors import ConfigError

    with pytest.raises(ConfigError, match="loss.method"):
        LossConfig(method="ktoo").validate()
    with pytest.raises(ConfigError, match="base.num_responses"):
        from bapo.runtime.config import BaseResponseConfig

        BaseResponseConfig(num_responses=2).validate()


# ---------------------------------------------------------------------------------------------------------------
# BAPO's rivals: replay, kl, dpo+nll


def test_replay_and_token_kl_by_hand():
    from bapo.core.losses import replay_loss, token_kl

    assert replay_loss(T([-3.0, -5.0])).tolist() == [3.0, 5.0]
    assert replay_loss(T([[-2.0, -4.0]])).tolist() == [3.0]  # averaged over base responses per prompt
    ref = torch.log(T([[0.5, 0.5], [0.1, 0.9]]))
    pol = torch.log(T([[0.25, 0.75], [0.1, 0.9]]))
    # 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 (0.693147 - 0.405465); identical distributions: 0
    assert token_kl(ref, pol).tolist() == pytest.approx([0.143841, 0.0], abs=1e-6)


def _with_base(base, ref_base, kl=None):
    p = _pairs(chosen=T([-10.0, -12.0]), rejected=T([-11.0, -11.0]))
    p.base, p.ref_base, p.base_len, p.base_kl = base, ref_base, T([[4.0], [2.0]]), kl
    return p


def test_replay_kl_and_dpo_nll_losses_by_hand():
    p = _with_base(T([[-6.0], [-3.0]]), T([[-5.0], [-4.0]]), kl=T([[0.4], [0.2]]))
    dpo = _dpo_by_hand(p, 0.1)
    loss, m = preference_loss(p, LossConfig(method="replay", anchor_lambda=0.5))
    assert loss.item() == pytest.approx(dpo + 0.5 * (6 + 3) / 2) and m["loss/replay"].item() == pytest.approx(4.5)
    loss, m = preference_loss(p, LossConfig(method="kl", anchor_lambda=2.0))
    assert loss.item() == pytest.approx(dpo + 2.0 * 0.3) and m["loss/kl"].item() == pytest.approx(0.3)
    loss, _ = preference_loss(p, LossConfig(method="kl", anchor_lambda=2.0, anchor_reduction="mean"))
    assert loss.item() == pytest.approx(dpo + 2.0 * (0.4 / 4 + 0.2 / 2) / 2)  # per-token
    loss, m = preference_loss(p, LossConfig(method="bapo", anchor_lambda=1.0))  # hinge: only the first is below
    assert loss.item() == pytest.approx(dpo + (1.0 + 0.0) / 2)
    # dpo+nll: RPO's term at weight 1 unless rpo_alpha says otherwise; token-weighted over the batch
    loss, m = preference_loss(p, LossConfig(method="dpo+nll"))
    nll = (10 + 12) / (p.chosen_len.sum().item())
    assert loss.item() == pytest.approx(dpo + nll) and m["loss/nll"].item() == pytest.approx(nll)
    assert preference_loss(p, LossConfig(method="dpo+nll", rpo_alpha=0.5))[0].item() == pytest.approx(dpo + 0.5 * nll)
    assert LossConfig(method="dpo+nll").pairwise == "dpo" and not LossConfig(method="dpo+nll").uses_anchor
    assert LossConfig(method="replay").uses_anchor and LossConfig(method="kl").needs_token_kl


def _dpo_by_hand(p, beta):
    lw, ll = p.chosen - p.ref_chosen, p.rejected - p.ref_rejected
    return (-torch.nn.functional.logsigmoid(beta * (lw - ll))).mean().item()


def test_replay_and_kl_pull_where_the_hinge_has_let_go():
    """Above the reference (policy log p(y_b) > reference's) the hinge's gradient is zero; replay's and kl's not."""
    from bapo.core.losses import BASE_TERMS, token_kl

    ref_base = T([[-5.0]])
    base = T([[-4.0]], requires_grad=True)  # already above the reference
    hinge = BASE_TERMS["bapo"](base, ref_base, None, 0.0, LossConfig()).sum()
    hinge.backward()
    assert base.grad.abs().sum().item() == 0.0
    base.grad = None
    BASE_TERMS["replay"](base, ref_base, None, 0.0, LossConfig()).sum().backward()
    assert base.grad.item() == pytest.approx(-1.0)
    # the token said got likelier (0.6 -> 0.8), but the distribution moved: the KL still pulls it back
    ref = torch.log(T([[0.6, 0.3, 0.1]]))
    logits = torch.log(T([[0.8, 0.1, 0.1]])).requires_grad_()
    token_kl(ref, torch.log_softmax(logits, -1)).sum().backward()
    assert logits.grad.abs().sum().item() > 0.1


def test_trls_other_pairwise_losses_by_hand():
    """Each of bapo.core.losses_more at lr_w = 1, lr_l = -1 (d = 2), beta 0.5, written out with math."""
    import math

    from bapo.core import losses_more as m

    w, l_, b = torch.tensor([1.0]), torch.tensor([-1.0]), 0.5
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    ls = lambda x: math.log(s(x))  # noqa: E731
    assert m.apo_zero_loss(w, l_, b).item() == pytest.approx(1 - s(0.5) + s(-0.5))
    assert m.apo_down_loss(w, l_, b).item() == pytest.approx(s(0.5) + 1 - s(1.0))
    assert m.sppo_hard_loss(w, l_, b).item() == pytest.approx((1 - 1) ** 2 + (-1 + 1) ** 2)  # both on target
    assert m.nca_pair_loss(w, l_, b).item() == pytest.approx(-ls(0.5) - 0.5 * ls(-0.5) - 0.5 * ls(0.5))
    eps = 0.1
    assert m.exo_pair_loss(w, l_, b, eps).item() == pytest.approx(
        s(1) * (ls(1) - math.log(1 - eps)) + s(-1) * (ls(-1) - math.log(eps)))
    assert m.bco_pair_loss(w, l_, b).item() == pytest.approx(-ls(0.5) - ls(0.5))
    assert m.discopop_loss(w, l_, b, 0.05).item() == pytest.approx((1 - s(20)) * -ls(1) + s(20) * math.exp(-1))
    assert m.sigmoid_norm_loss(w / 4, l_ / 4, b).item() == pytest.approx(-ls(0.25))
    # AOT sorts the batch's margins: pairing the smallest policy margin with the smallest reference one
    got = m.aot_loss(torch.tensor([3.0, -1.0]), torch.tensor([0.0, 2.0]), b, 0.0)
    assert got.tolist() == pytest.approx([-ls(0.5 * (-1 - 0)), -ls(0.5 * (3 - 2))])


def test_kto_by_hand():
    import math

    from bapo.core.losses_more import kto_loss, kto_reference_point

    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    z0 = kto_reference_point(torch.tensor([0.5, -0.1, 0.2]))
    assert z0.item() == pytest.approx(0.2)
    assert kto_reference_point(torch.tensor([-1.0, -2.0])).item() == 0.0  # clamped at 0
    got = kto_loss(torch.tensor([1.0, 1.0, -0.6]), torch.tensor([True, False, False]), z0, 0.5, 1.0, 1.5)
    assert got.tolist() == pytest.approx([1 - s(0.5 * 0.8), 1.5 * (1 - s(0.5 * -0.8)), 1.5 * (1 - s(0.5 * 0.8))])


def test_kto_through_preference_loss_with_and_without_the_anchor():
    """Unpaired feedback: ``chosen`` holds each rated answer, ``rejected`` a mismatched one (the KL estimate)."""
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    p = PairLogps(chosen=T([-4.0, -6.0]), rejected=T([-7.0, -9.0]), ref_chosen=T([-5.0, -5.0]),
                  ref_rejected=T([-7.5, -8.9]), chosen_len=T([3.0, 3.0]), rejected_len=T([4.0, 4.0]),
                  base=T([[-10.0], [-12.0]]), ref_base=T([[-9.0], [-12.5]]), liked=T([True, False]))
    # log-ratios 1 and -1; mismatched ones 0.5 and -0.1: z0 = 0.2; the second (disliked) is below z0 as it should be
    kto = (1 - s(0.5 * (1 - 0.2)) + 2.0 * (1 - s(0.5 * (0.2 + 1)))) / 2
    loss, metrics = preference_loss(p, LossConfig(method="kto", beta=0.5, undesirable_weight=2.0))
    assert loss.item() == pytest.approx(kto)
    assert metrics["kl"].item() == pytest.approx(0.2)
    assert metrics["rewards/margins"].item() == pytest.approx(0.5 * 1 - 0.5 * -1)
    assert "rewards/accuracies" not in metrics  # no pairs to rank
    # a batch of liked answers only has the same keys (processes gather them alike), NaN where nothing was rated
    one_sided = preference_loss(PairLogps(**{**p.__dict__, "liked": T([True, True])}), LossConfig(method="kto"))[1]
    assert set(one_sided) == set(metrics) and math.isnan(one_sided["rewards/rejected"].item())
    assert one_sided["rewards/chosen"].item() == pytest.approx(0.1 * (1 - 1) / 2)
    # bapo over kto: the anchor's hinge on the first base response only (1 nat below the reference), mean over 2
    loss, _ = preference_loss(p, LossConfig(method="bapo", pref_loss="kto", beta=0.5, undesirable_weight=2.0,
                                            anchor_lambda=0.3))
    assert loss.item() == pytest.approx(kto + 0.3 * 0.5)
    with pytest.raises(ValueError, match="unpaired feedback"):
        preference_loss(PairLogps(*[p.chosen, p.rejected, p.ref_chosen, p.ref_rejected, p.chosen_len,
                                    p.rejected_len]), LossConfig(method="kto"))


def test_kto_refuses_an_nll_term_and_bad_weights():
    from bapo.errors import ConfigError

    with pytest.raises(ConfigError, match="rpo_alpha"):
        LossConfig(method="kto", rpo_alpha=1.0).validate()
    with pytest.raises(ConfigError, match="desirable_weight"):
        LossConfig(method="kto", undesirable_weight=0.0).validate()
    assert LossConfig(method="bapo", pref_loss="kto").unpaired and not LossConfig(method="dpo").unpaired


def test_the_anchor_tolerance_absorbs_rounding_and_nothing_more():
    """A cached reference differs from the policy at step 0 by rounding alone; a hinge has its full gradient for any
    positive gap, so without a tolerance it pushes on every base response from the first step."""
    from bapo.core.losses import PairLogps

    n = T([[40.0], [80.0]])
    policy = T([[-30.0], [-70.0]], requires_grad=True)
    rounding = T([[3e-6 * 40], [-2e-6 * 80]])  # the cached reference's rounding: 3e-6 and -2e-6 nats per token
    ref = policy.detach() + rounding

    def anchor(tolerance, ref_base):
        p = PairLogps(T([-1.0, -1.0]), T([-2.0, -2.0]), T([-1.0, -1.0]), T([-2.0, -2.0]), T([5.0, 5.0]),
                      T([5.0, 5.0]), base=policy, ref_base=ref_base, base_len=n)
        policy.grad = None
        cfg = LossConfig(method="bapo", anchor_lambda=1.0, anchor_tolerance=tolerance)
        loss, metrics = preference_loss(p, cfg)
        loss.backward()
        return metrics["loss/anchor"].item(), policy.grad.abs().sum().item()

    assert anchor(0.0, ref)[1] == pytest.approx(0.5)  # the paper's hinge: seq 1's gradient, full size, from rounding
    assert anchor(1e-5, ref) == (0.0, 0.0)  # float32's tolerance: nothing
    # a real loss still counts, less the tolerance: 0.5 nats per token below the reference over 40 tokens
    value, grad = anchor(1e-5, policy.detach() + T([[0.5 * 40], [0.0]]))
    assert value == pytest.approx((20.0 - 1e-5 * 40) / 2) and grad == pytest.approx(0.5)
    from bapo.errors import ConfigError

    with pytest.raises(ConfigError, match="anchor_tolerance"):
        LossConfig(anchor_tolerance=-0.5).validate()
