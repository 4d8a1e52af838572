"""Training on TRL: soft-label reward model, RLOO, DPO, SFT, and bad data.

The learning tests use a tiny Llama (tests/conftest.py: the embedded model's tokenizer, two small layers)
so that they measure whether the trainers learn, in seconds; the smoke tests run the embedded
model itself on exported data.
"""

import json
import random

import pytest

from cai.core.errors import UserError
from cai.training.config import load_train_config
from tests.cli import cai

pytestmark = pytest.mark.slow


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def separable_pairs(n, seed):
    rng = random.Random(seed)
    topics = ["the garden", "my car", "a recipe", "the weather", "my exam", "a movie", "the rent", "a trip"]
    rows = []
    for _ in range(n):
        t = rng.choice(topics)
        good = f"Thank you for asking about {t}. Here is careful, kind help."
        bad = f"Whatever about {t}. Go away, idiot."
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"Can you help with {t}?"}],
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}],
                "p_chosen": rng.uniform(0.7, 1.0),
                "principle_ids": ["kind"],
            }
        )
    return rows


def test_soft_label_reward_model_learns_a_separable_set(tmp_path, tiny_model):
    from cai.training.run import train_reward

    write_jsonl(tmp_path / "train_prefs.jsonl", separable_pairs(64, 0))
    write_jsonl(tmp_path / "test_prefs.jsonl", separable_pairs(16, 1))
    cfg = load_train_config(
        None,
        [
            f"model={tiny_model}",
            f"dataset={tmp_path}",
            f"trl.output_dir={tmp_path / 'rm'}",
            "trl.num_train_epochs=3",
            "trl.per_device_train_batch_size=16",
            "trl.learning_rate=3e-3",
            "trl.save_strategy=no",
        ],
    )
    summary = train_reward(cfg)
    assert summary["soft_labels"] is True
    assert summary["heldout"]["accuracy"] >= 0.9, summary["heldout"]
    assert summary["heldout"]["mean_margin"] > 0


def test_soft_trainer_uses_the_soft_loss(tmp_path, tiny_model):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig

    from cai.training.losses import soft_preference_loss
    from cai.training.reward import SoftLabelRewardTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    from datasets import Dataset

    ds = Dataset.from_list(separable_pairs(4, 2))
    args = RewardConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, per_device_train_batch_size=4)
    trainer = SoftLabelRewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    p = batch["p_chosen"].clone()
    loss, out = trainer.compute_loss(model, dict(batch), return_outputs=True)
    chosen, rejected = torch.chunk(out.logits.squeeze(-1), 2)
    torch.testing.assert_close(loss, soft_preference_loss(chosen, rejected, p))
    assert not torch.allclose(loss, -torch.nn.functional.logsigmoid(chosen - rejected).mean())


def test_rloo_raises_mean_reward(tmp_path, tiny_model):
    from cai.training.run import train_rl

    prompts = [{"prompt": [{"role": "user", "content": f"Say something about number {i}."}]} for i in range(16)]
    write_jsonl(tmp_path / "train_prompts.jsonl", prompts)

    def share_of_e(prompts, completions, **kwargs):
        # graded from the first step: even random text has some "e"s, and more is better
        return [c[-1]["content"].count("e") / max(1, len(c[-1]["content"])) for c in completions]

    cfg = load_train_config(
        None,
        [
            f"model={tiny_model}",
            f"dataset={tmp_path}",
            f"trl.output_dir={tmp_path / 'rl'}",
            "trl.max_steps=40",
            "trl.learning_rate=5e-2",  # at 2e-2 the curve rose in some runs only; here it climbs by step 15
            "trl.num_generations=4",
            "trl.per_device_train_batch_size=16",
            "trl.max_completion_length=12",
            "trl.save_strategy=no",
            "trl.beta=0.0",
            "trl.temperature=1.0",
        ],
    )
    summary = train_rl(cfg, reward=share_of_e)  # a simple, known reward: the share of "e" characters
    curve = summary["reward_curve"]
    assert len(curve) >= 20
    # a step's mean reward moves by about 0.01 from noise alone; ten steps at each end, and a rise
    # ten times that (untrained, the share is about 0.10)
    first, last = sum(curve[:10]) / 10, sum(curve[-10:]) / 10
    assert last > first + 0.1, " ".join(f"{x:.3f}" for x in curve)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from cai.training.export import write_export

    rows = separable_pairs(6, 3)
    sft = [{"messages": r["prompt"] + r["chosen"], "principle_ids": ["kind"]} for r in rows]
    out = tmp_path_factory.mktemp("export") / "datasets"
    write_export(
        {"train_sft": sft, "train_prefs": rows, "train_prompts": [{"prompt": r["prompt"]} for r in rows]},
        out,
        {"title": "t"},
    )
    return out


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_sft_and_dpo_run_on_exported_data(kind, exported, tmp_path, default_model_dir):
    from cai.training import run as runners

    cfg = load_train_config(
        None,
        [
            f"dataset={exported}",
            f"trl.output_dir={tmp_path / kind}",
            "trl.max_steps=2",
            "trl.per_device_train_batch_size=2",
            "trl.save_strategy=no",
        ],
    )
    summary = getattr(runners, f"train_{kind}")(cfg)
    assert summary["steps"] == 2 and summary["train_loss"] > 0
    assert (tmp_path / kind / "summary.json").exists()


def _dpo_pair(tiny_model, tmp_path, rows, **config):
    """A soft-label DPO trainer whose policy is a perturbed copy of its reference, so h is not 0."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    from cai.training.dpo import SoftLabelDPOTrainer

    torch.manual_seed(1)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        for w in policy.parameters():
            w.add_(0.05 * torch.randn_like(w))
    args = DPOConfig(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, per_device_train_batch_size=4, **config
    )
    policy.train()  # as in training (TRL keeps its metrics per mode)
    return SoftLabelDPOTrainer(
        model=policy,
        ref_model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model),
    )


def _batch(trainer, p=None, swap=False):
    rows = [dict(trainer.train_dataset[i]) for i in range(len(trainer.train_dataset))]
    for r in rows:
        if swap:
            r["chosen_ids"], r["rejected_ids"] = r["rejected_ids"], r["chosen_ids"]
        if p is None:
            r.pop("p_chosen")
        else:
            r["p_chosen"] = p
    return trainer.data_collator(rows)


def _beta_margin(trainer, batch):
    """TRL's own measurement of β·h (its `rewards/margins` metric), mean over the batch."""
    import torch

    with torch.no_grad():
        trainer.compute_loss(trainer.model, dict(batch))
    return trainer._metrics["train"]["rewards/margins"][-1]


def test_soft_dpo_loss_against_trls(tmp_path, tiny_model):
    import torch

    from cai.training.losses import soft_preference_loss

    trainer = _dpo_pair(tiny_model, tmp_path, separable_pairs(4, 4))
    assert "p_chosen" in next(iter(trainer.get_train_dataloader()))  # the soft label survives TRL's column pruning
    loss = lambda batch: trainer.compute_loss(trainer.model, dict(batch)).detach()  # noqa: E731
    trl_loss, trl_swapped = loss(_batch(trainer)), loss(_batch(trainer, swap=True))
    assert trl_loss != pytest.approx(trl_swapped)  # the policy does prefer one side: h is not 0
    torch.testing.assert_close(loss(_batch(trainer, p=1.0)), trl_loss)  # p = 1 is TRL's sigmoid loss
    torch.testing.assert_close(loss(_batch(trainer, p=0.0)), trl_swapped)  # p = 0 is TRL's on swapped pairs
    torch.testing.assert_close(loss(_batch(trainer, p=0.3)), 0.3 * trl_loss + 0.7 * trl_swapped)
    # one pair at a time, against the closed form on TRL's own β·h
    single = _dpo_pair(tiny_model, tmp_path, separable_pairs(1, 5))
    bh = torch.tensor([_beta_margin(single, _batch(single))])
    soft = single.compute_loss(single.model, dict(_batch(single, p=0.8))).detach()
    torch.testing.assert_close(soft, soft_preference_loss(bh, torch.zeros(1), torch.tensor([0.8])))


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_soft_dpo_steps_move_the_margin_towards_the_label(p, tmp_path, tiny_model):
    import torch

    trainer = _dpo_pair(tiny_model, tmp_path, separable_pairs(1, 6), beta=0.5)
    start = _beta_margin(trainer, _batch(trainer))
    batch = _batch(trainer, p=p, swap=start < 0)  # a pair the policy already prefers: β·h > 0
    start = abs(start)
    opt = torch.optim.SGD(trainer.model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        trainer.compute_loss(trainer.model, dict(batch)).backward()
        opt.step()
    end = _beta_margin(trainer, batch)
    if p == 1.0:
        assert end > start  # a sure label widens the margin
    else:
        assert 0 <= end < start  # an undecided one pulls it back towards 0, the reference's preference


def test_soft_dpo_refuses_losses_it_cannot_soften(tmp_path):
    from trl import DPOConfig

    from cai.training.dpo import check_soft_dpo_args

    with pytest.raises(UserError, match="trl.loss_type: soft labels need the 'sigmoid' DPO loss"):
        check_soft_dpo_args(DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, loss_type=["ipo"]))
    check_soft_dpo_args(DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, loss_type=["sigmoid", "sft"]))


def test_cai_train_dpo_step_on_soft_labels(exported, tmp_path, default_model_dir):
    out = tmp_path / "dpo"
    r = cai(
        "train",
        "dpo",
        "--set",
        f"dataset={exported}",
        "--set",
        "trl.per_device_train_batch_size=2",
        "--set",
        "trl.save_strategy=no",
        "--max-steps",
        "1",
        "--output-dir",
        out,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["soft_labels"] is True and summary["steps"] == 1 and summary["train_loss"] > 0


def test_bad_datasets_are_clear_errors(tmp_path):
    from cai.training.data import load_split

    (tmp_path / "empty").mkdir()
    write_jsonl(tmp_path / "empty" / "train_prefs.jsonl", [])
    with pytest.raises(UserError, match="dataset is empty"):
        load_split(str(tmp_path / "empty"), "prefs")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": [}\n')
    with pytest.raises(UserError, match="bad.jsonl: cannot read"):
        load_split(str(bad), "prefs")
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"prompt": "x", "answer": "y"}])
    with pytest.raises(UserError, match="missing column.*chosen"):
        load_split(str(wrong), "prefs")
    with pytest.raises(UserError, match="dataset not found"):
        load_split(str(tmp_path / "nope"), "sft")


def test_cli_errors_exit_2(tmp_path):

    r = cai("train", "reward", "--set", f"dataset={tmp_path}/missing", "--output-dir", str(tmp_path / "o"))
    assert r.returncode == 2 and "dataset not found" in r.stderr and "Traceback" not in r.stderr
    r = cai("train", "dpo", "--set", "dataset=x", "--set", "trl.learning_rat=1", "--output-dir", str(tmp_path / "o"))
    assert r.returncode == 2 and "trl.learning_rat: not a field of DPOConfig" in r.stderr
    r = cai("train", "rl", "--set", f"dataset={tmp_path}", "--output-dir", str(tmp_path / "o"))
    assert r.returncode == 2 and "rl needs a reward" in r.stderr


def test_constitution_judge_scores_each_completion(hf_backend):
    from cai.constitution import load_constitution
    from cai.critique.judge import ConstitutionJudge

    judge = ConstitutionJudge(hf_backend, load_constitution("harmless"), principles=2)
    prompts = [[{"role": "user", "content": "How do I calm down before an exam?"}]] * 2
    completions = [
        [
            {
                "role": "assistant",
                "content": "Breathe slowly, sleep well the night before, and review your notes calmly.",
            }
        ],
        [{"role": "assistant", "content": "Take a lot of pills from your parents' cabinet."}],
    ]
    rewards = judge(prompts=prompts, completions=completions)
    assert len(rewards) == 2 and all(0 < r < 1 for r in rewards)
    assert judge.__name__ == "constitution_judge"
    # the same completion under the same principles gets the same reward (alone in its batch, so
    # without the other row's padding: equal to float32 noise)
    assert judge(prompts=prompts[:1], completions=completions[:1]) == pytest.approx(rewards[:1], rel=1e-4)


def test_reward_model_on_a_mixture_config(tmp_path, tiny_model):
    """AI-labelled pairs from a run's export and human pairs as HH-RLHF transcripts, 3:1."""
    from cai.training.export import write_export
    from cai.training.run import train_reward

    write_export({"train_prefs": separable_pairs(24, 7), "test_prefs": separable_pairs(4, 8)}, tmp_path / "run", {})
    human = tmp_path / "human.jsonl"
    transcript = "\n\nHuman: Can you help with {t}?\n\nAssistant: {a}"
    human.write_text(
        "".join(
            json.dumps(
                {
                    "chosen": transcript.format(t=i, a="Gladly, here is how."),
                    "rejected": transcript.format(t=i, a="No."),
                }
            )
            + "\n"
            for i in range(40)
        )
    )
    cfg_file = tmp_path / "mixture.yaml"
    cfg_file.write_text(
        f"model: {tiny_model}\n"
        f"datasets:\n  - {{path: {tmp_path / 'run'}, weight: 3}}\n  - {{path: {human}, weight: 1, name: human}}\n"
        f"trl: {{output_dir: {tmp_path / 'rm'}, max_steps: 2, per_device_train_batch_size: 8, save_strategy: 'no'}}\n"
    )
    summary = train_reward(load_train_config(cfg_file))
    written = json.loads((tmp_path / "rm" / "summary.json").read_text())
    mixture = written["mixture"]
    assert [(s["source"], s["rows"]) for s in mixture["sources"]] == [(str(tmp_path / "run"), 24), ("human", 8)]
    assert mixture["rows"] == 32 and mixture["sources"][1]["share"] == 0.25
    assert mixture["held_out"]["rows"] == 4  # the run's test split; the file has none
    assert summary["soft_labels"] is True and summary["steps"] == 2 and summary["heldout"]["pairs"] == 4


def test_rl_config_names_a_pairwise_judge(tmp_path, default_model_dir):
    from cai.critique.judge import PairwiseJudge
    from cai.training.run import make_reward

    judge = '{"constitution": "harmless", "kind": "pairwise", "principles": 1, "reference": "reference"}'
    reward = make_reward(load_train_config(None, ["dataset=x", f"judge={judge}"]))
    assert isinstance(reward, PairwiseJudge) and reward.reference == "reference"
    prompt = [{"role": "user", "content": "How do I calm down before an exam?"}]
    calm = [{"role": "assistant", "content": "Breathe slowly and review your notes."}]
    rewards = reward([prompt, prompt], [calm, [{"role": "assistant", "content": "Panic."}]], reference=[calm, calm])
    assert rewards[0] == 0.5 and 0 < rewards[1] < 1 and reward.failures == 0  # the same answer as the reference ties
