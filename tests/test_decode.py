"""Iterative decoding invariants, on a random (but deterministic) logits function."""

import math

import pytest
import torch

from maskgit_cli import decode, schedules

K, N = 10, 36


def logits_fn(ids: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Depends on each sample's own ids only (like a transformer), deterministic."""
    out = []
    for row in ids:
        g = torch.Generator().manual_seed(int((row * torch.arange(1, N + 1)).sum()) % 100_003)
        out.append(torch.randn(N, K, generator=g) * 3)
    return torch.stack(out)[where]


def position_critic(ids: torch.Tensor) -> torch.Tensor:
    """A critic that trusts later positions more: logit = position index, whatever the tokens."""
    return torch.arange(N, dtype=torch.float32).expand(ids.shape[0], N).clone()


def run(B=4, frac=0.6, seed=0, T=8, **kw):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, K, (B, N), generator=g)
    unknown = torch.rand(B, N, generator=g) < frac
    gens = [torch.Generator().manual_seed(100 + b) for b in range(B)]
    res = decode.decode(
        ids, unknown, logits_fn, mask_id=K, generators=gens, total_iter=T, record=True, **kw
    )
    return ids, unknown, res


@pytest.mark.parametrize("schedule", list(schedules.SCHEDULES))
def test_known_tokens_never_change_and_no_mask_left(schedule):
    ids, unknown, res = run(schedule=schedule)
    assert torch.equal(res.ids[~unknown], ids[~unknown])
    assert (res.ids != K).all() and res.ids.max() < K
    for pred in res.predictions:  # at no step does a known token move
        assert torch.equal(pred[~unknown], ids[~unknown])


@pytest.mark.parametrize("critic", [None, "step", "hole"])
@pytest.mark.parametrize("schedule", ["cosine", "linear", "square"])
def test_masked_count_follows_the_schedule_of_the_initial_count(schedule, critic):
    T = 8
    scored = {"critic_fn": position_critic, "critic_scope": critic} if critic else {}
    ids, unknown, res = run(schedule=schedule, T=T, B=6, frac=0.9, **scored)
    unknown0 = unknown.sum(1)
    prev = unknown0.clone()
    for t, m in enumerate(res.masks):
        now = m.sum(1)
        expected = torch.floor(schedules.gamma(schedule, (t + 1) / T) * unknown0.double()).long()
        expected = torch.minimum(
            expected, (prev - 1).clamp(min=0)
        )  # at least one revealed per step
        if t == T - 1:
            expected = torch.zeros_like(expected)
        active = prev > 0
        assert torch.equal(now[active], expected[active]), (t, now, expected)
        assert (now[active] < prev[active]).all()  # each step reveals at least one token
        prev = now
    assert (res.masks[-1].sum(1) == 0).all()


def test_remasked_positions_are_a_subset_of_the_hole():
    _, unknown, res = run()
    for m in res.masks:
        assert not (m & ~unknown).any()
    for a, b in zip(res.masks, res.masks[1:], strict=False):
        assert not (b & ~a).any()  # a revealed token is never masked again


def test_same_seed_same_output_and_other_seed_differs():
    _, _, a = run(seed=0)
    _, _, b = run(seed=0)
    assert torch.equal(a.ids, b.ids)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, K, (4, N), generator=g)
    unknown = torch.rand(4, N, generator=g) < 0.6
    other = decode.decode(
        ids,
        unknown,
        logits_fn,
        mask_id=K,
        total_iter=8,
        generators=[torch.Generator().manual_seed(999 + b) for b in range(4)],
    )
    assert not torch.equal(a.ids, other.ids)


def test_a_batch_equals_its_samples_one_by_one():
    ids, unknown, res = run(B=5)
    for b in range(5):
        single = decode.decode(
            ids[b : b + 1],
            unknown[b : b + 1],
            logits_fn,
            mask_id=K,
            total_iter=8,
            generators=[torch.Generator().manual_seed(100 + b)],
        )
        assert torch.equal(single.ids[0], res.ids[b])


def test_sweet_spot_runs_t_steps_of_the_T_step_schedule_then_commits():
    T, t = 12, 4
    ids, unknown, full = run(T=T, frac=0.95)
    _, _, short = run(T=T, frac=0.95, sweet_spot=t)
    assert short.steps == t and len(short.masks) == t
    # the first t-1 steps are exactly those of the full schedule (same noise, same gamma)
    for a, b in zip(full.masks[: t - 1], short.masks[: t - 1], strict=True):
        assert torch.equal(a, b)
    # at step t everything still masked is committed from that step's samples
    assert (short.ids != K).all()
    assert torch.equal(short.ids, short.predictions[-1])
    assert torch.equal(short.ids[~unknown], ids[~unknown])


def test_greedy_is_deterministic_regardless_of_generators():
    ids, unknown, a = run(greedy=True, choice_temperature=0.0)
    gens = [torch.Generator().manual_seed(7 + b) for b in range(4)]
    b = decode.decode(
        ids,
        unknown,
        logits_fn,
        mask_id=K,
        generators=gens,
        total_iter=8,
        greedy=True,
        choice_temperature=0.0,
    )
    assert torch.equal(a.ids, b.ids)


def test_nothing_missing_is_a_no_op_and_everything_missing_generates():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, K, (2, N), generator=g)
    none = decode.decode(
        ids,
        torch.zeros(2, N, dtype=torch.bool),
        logits_fn,
        mask_id=K,
        generators=[torch.Generator() for _ in range(2)],
    )
    assert torch.equal(none.ids, ids) and none.steps == 0
    full = decode.decode(
        ids,
        torch.ones(2, N, dtype=torch.bool),
        logits_fn,
        mask_id=K,
        total_iter=6,
        generators=[torch.Generator().manual_seed(b) for b in range(2)],
    )
    assert (full.ids != K).all() and full.steps == 6


def test_confidence_uses_log_probabilities_and_annealed_noise():
    # with zero choice temperature, the most probable sampled tokens are revealed first
    logits = torch.full((1, 4, K), -10.0)
    for pos, p in enumerate([5.0, 1.0, 3.0, 0.0]):
        logits[0, pos, pos] = p
    fn = lambda ids, where: logits[where]  # noqa: E731
    res = decode.decode(
        torch.zeros(1, 4, dtype=torch.long),
        torch.ones(1, 4, dtype=torch.bool),
        fn,
        mask_id=K,
        generators=[torch.Generator()],
        total_iter=4,
        schedule="linear",
        greedy=True,
        choice_temperature=0.0,
        record=True,
    )
    revealed = [(~m[0]).nonzero().flatten().tolist() for m in res.masks]
    assert revealed[0] == [0] and revealed[1] == [0, 2] and revealed[2] == [0, 1, 2]
    assert math.isclose(decode.num_masked_after(0, 4, torch.tensor([4]), "linear").item(), 3)


def test_truncation_keeps_the_top_k_and_the_nucleus():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]])
    logp = p.log()
    kept = lambda out: torch.isfinite(out)  # noqa: E731
    assert torch.equal(decode.truncate(logp), logp)  # defaults: nothing dropped
    assert kept(decode.truncate(logp, top_k=2)).tolist() == [
        [True, True, False, False],
        [False, False, True, True],
    ]
    # the nucleus: the most likely codes until their mass reaches p (0.5 + 0.3 >= 0.79)
    assert kept(decode.truncate(logp, top_p=0.79)).tolist() == [
        [True, True, False, False],
        [False, False, True, True],
    ]
    assert kept(decode.truncate(logp, top_p=0.81)).sum(1).tolist() == [3, 3]
    assert kept(decode.truncate(logp, top_p=1e-3)).sum(1).tolist() == [
        1,
        1,
    ]  # the best always survives
    assert kept(decode.truncate(logp, top_k=3, top_p=0.45)).sum(1).tolist() == [1, 1]


def test_top_k_sampling_stays_in_the_top_k_and_top_1_is_greedy():
    ids, unknown, greedy = run(
        greedy=True, choice_temperature=0.0
    )  # no noise: the draw order is moot
    _, _, top1 = run(top_k=1, choice_temperature=0.0)
    assert torch.equal(top1.ids, greedy.ids)
    calls = []

    def recording(cur, where):
        calls.append((where.clone(), logits_fn(cur, where)))
        return calls[-1][1]

    gens = [torch.Generator().manual_seed(100 + b) for b in range(len(ids))]
    top3 = decode.decode(
        ids, unknown, recording, mask_id=K, generators=gens, total_iter=8, record=True, top_k=3
    )
    _, _, full = run()
    assert not torch.equal(top3.ids, full.ids)  # the truncation changes what is drawn
    for (where, logits), pred in zip(
        calls, top3.predictions, strict=True
    ):  # every draw is among its row's top 3
        drawn = pred[where]
        assert (logits.topk(3, dim=-1).indices == drawn[:, None]).any(-1).all()


@pytest.mark.parametrize("scope", decode.CRITIC_SCOPES)
def test_a_critic_keeps_known_tokens_and_leaves_no_mask(scope):
    ids, unknown, res = run(critic_fn=position_critic, critic_scope=scope, choice_temperature=2.0)
    assert torch.equal(res.ids[~unknown], ids[~unknown])
    assert (res.ids != K).all()
    for m in res.masks:
        assert not (m & ~unknown).any()


def test_the_critic_not_the_generator_chooses_what_is_remasked():
    """Noise off: after each step the positions left masked are the ones the critic trusts
    least (the lowest indices of the hole), not the generator's least likely."""
    ids, unknown, res = run(critic_fn=position_critic, critic_scope="hole", choice_temperature=0.0)
    for m in res.masks:
        for b in range(len(ids)):
            hole = unknown[b].nonzero().squeeze(1)
            n = int(m[b].sum())
            assert torch.equal(m[b].nonzero().squeeze(1), hole[:n])


def test_with_the_hole_scope_a_committed_token_can_be_drawn_again():
    """A critic that distrusts, at the second step, a position the first step committed: with
    scope 'hole' it is masked again; with scope 'step' it stays."""
    calls = []

    def flip_critic(ids):
        calls.append(1)
        score = torch.arange(N, dtype=torch.float32).expand(ids.shape[0], N).clone()
        return score if len(calls) == 1 else -score  # step 2 distrusts the late positions

    def masked_after_two(scope):
        calls.clear()
        ids, unknown, res = run(
            B=1, frac=1.0, T=4, critic_fn=flip_critic, critic_scope=scope, choice_temperature=0.0
        )
        return res.masks[0][0], res.masks[1][0]

    first, second = masked_after_two("hole")
    committed = ~first
    assert (second & committed).any()  # re-masked after being committed
    first, second = masked_after_two("step")
    assert not (second & ~first).any()


def test_an_unknown_critic_scope_fails():
    with pytest.raises(ValueError, match="critic_scope"):
        run(critic_fn=position_critic, critic_scope="everything")
