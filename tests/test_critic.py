"""The Token-Critic: its training pairs, its start from the generator, its stage, and decoding with
it through the CLI."""

import shutil

import torch
from conftest import TINY, inpaint_args, invoke_json, known_pixels_unchanged

from maskgit_cli import checkpoint, critic
from maskgit_cli.config import TransformerConfig
from maskgit_cli.transformer import build

K, GRID = 16, 4


def tiny_generator() -> torch.nn.Module:
    torch.manual_seed(0)
    return build(TransformerConfig(dim=32, layers=2, heads=2, mlp_dim=64), GRID, K).eval()


def test_corrupt_replaces_exactly_the_masked_positions():
    gen = tiny_generator()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, K, (8, GRID * GRID), generator=g)
    mask = torch.rand(8, GRID * GRID, generator=g) < 0.5
    fake, replaced = critic.corrupt(gen, ids, mask, None, g, top_p=0.9)
    assert torch.equal(replaced, mask)
    assert torch.equal(fake[~mask], ids[~mask])
    assert fake.max() < K and fake.min() >= 0  # never MASK: the generator's head cannot name it
    again, _ = critic.corrupt(gen, ids, mask, None, torch.Generator().manual_seed(1), top_p=0.9)
    assert not torch.equal(again, fake)  # sampled, not the argmax


def test_the_critic_starts_from_the_generators_trunk_with_no_opinion():
    gen = tiny_generator()
    cr = critic.build(gen.cfg, GRID, K)
    left_out = cr.start_from(gen.state_dict())
    assert left_out == ["head.bias", "head.weight"]
    for key, value in gen.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(cr.body.state_dict()[key], value), key
    ids = torch.randint(0, K, (3, GRID * GRID))
    assert torch.equal(cr(ids), torch.zeros(3, GRID * GRID))  # logit 0: p(real) = 1/2


def test_critic_loss_is_low_only_for_a_critic_that_tells_them_apart():
    replaced = torch.tensor([[True, False, False, True]])
    right = critic.critic_loss(torch.tensor([[-5.0, 5.0, 5.0, -5.0]]), replaced)
    wrong = critic.critic_loss(torch.tensor([[5.0, -5.0, -5.0, 5.0]]), replaced)
    assert right < 0.01 < 4.9 < wrong


def train_critic(runner, tiny_data, run, *extra: str) -> dict:
    return invoke_json(
        runner,
        [
            "train",
            str(TINY),
            "--stage",
            "critic",
            "--data",
            str(tiny_data["train"]),
            "--val",
            str(tiny_data["val"]),
            "--out",
            str(run),
            "--device",
            "cpu",
            *extra,
        ],
    )


def test_critic_stage_trains_resumes_exports_and_decodes(runner, tiny_data, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    first = train_critic(runner, tiny_data, run, "--max-steps", "4")
    assert first["stage"] == "critic" and first["steps"] == 4
    assert 0 <= first["val_accuracy"] <= 1 and first["val_loss"] > 0
    resumed = train_critic(runner, tiny_data, run, "--max-steps", "6", "--resume")
    assert resumed["steps"] == 6
    straight = tmp_path / "straight"
    shutil.copytree(tiny_run, straight)
    train_critic(runner, tiny_data, straight, "--max-steps", "6")
    a = checkpoint.load(run / checkpoint.CRITIC, "critic")["model"]
    b = checkpoint.load(straight / checkpoint.CRITIC, "critic")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # a resume equals an uninterrupted run

    out = tmp_path / "out"
    res = invoke_json(runner, inpaint_args(tiny_data, run, out, "-T", "3", "--remask", "critic"))
    assert res["count"] == len(list(tiny_data["masked"].iterdir()))
    known_pixels_unchanged(tiny_data, out)

    exported = tmp_path / "exported"
    invoke_json(runner, ["export", str(run), "--out", str(exported)])
    assert (exported / checkpoint.CRITIC).is_file()
    out2 = tmp_path / "out2"
    invoke_json(runner, inpaint_args(tiny_data, exported, out2, "-T", "3", "--remask", "critic"))
    known_pixels_unchanged(tiny_data, out2)


def test_remask_critic_without_a_critic_fails_with_the_fix(runner, tiny_data, tiny_run, tmp_path):
    res = invoke_json(
        runner, inpaint_args(tiny_data, tiny_run, tmp_path / "o", "--remask", "critic"), code=1
    )
    assert "--stage critic" in res["error"]
    assert not (tmp_path / "o").exists()


def test_a_critic_of_another_transformer_is_refused(runner, tiny_data, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    train_critic(runner, tiny_data, run, "--max-steps", "2")
    ck = torch.load(run / checkpoint.CRITIC, weights_only=True)
    ck["transformer_id"] = "0" * 12
    torch.save(ck, run / checkpoint.CRITIC)
    res = invoke_json(
        runner, inpaint_args(tiny_data, run, tmp_path / "o", "--remask", "critic"), code=1
    )
    assert "another transformer" in res["error"]
    # decoding without the critic still works: only --remask critic reads it
    invoke_json(runner, inpaint_args(tiny_data, run, tmp_path / "o2", "-T", "2"))


def test_starting_from_a_lab_layout_transformer_is_refused_by_name(
    runner, tiny_data, tiny_run, tmp_path
):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / checkpoint.TOKENIZER, run / checkpoint.TOKENIZER)
    lab_layout = ["--set", "transformer.norm=post", "--set", "transformer.head=tied"]
    train = ["train", str(TINY), "--data", str(tiny_data["train"]), "--out", str(run)]
    invoke_json(runner, [*train, "--stage", "transformer", "--max-steps", "2", *lab_layout])
    res = invoke_json(
        runner, [*train, "--stage", "critic", "--max-steps", "2", "--device", "cpu"], code=1
    )
    assert "critic_train.from_transformer=false" in res["error"]
    invoke_json(
        runner,
        [
            *train,
            "--stage",
            "critic",
            "--max-steps",
            "2",
            "--device",
            "cpu",
            "--set",
            "critic_train.from_transformer=false",
        ],
    )
