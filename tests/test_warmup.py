"""The supervised warm-up (rl.warmup): targets match the reward, SFT lowers the loss, the output reloads."""
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deltarl.rewards import arithmetic_reward
from deltarl.rl import warmup
from deltarl.rl.data.tasks import make_task

TINY = ["--hidden", "32", "--layers", "4", "--heads", "2", "--ffn", "64", "--batch-size", "16",
        "--eval-size", "8", "--samples", "2", "--eval-every", "0", "--threads", "1"]


def test_targets_are_what_the_reward_accepts():
    args = warmup.parse_args(["--out", "x", "--ops", "+-"])
    tokenizer = warmup.char_tokenizer()
    for row in make_task("arithmetic", 50, seed=3, **warmup.task_options(args)):
        ids, labels = warmup.encode(tokenizer, row)
        target = [t for t in labels if t != -100]
        assert target[-1] == tokenizer.eos_token_id and ids[-len(target):] == target
        assert tokenizer.decode(ids[:-len(target)]) == row["prompt"]
        response = tokenizer.decode(target, skip_special_tokens=True)
        assert arithmetic_reward(row["prompt"], response, row["answer"]) == 1.0
        assert len(target) <= warmup.answer_budget(args)


def test_held_out_prompts_are_not_trained_on():
    args = warmup.parse_args(["--out", "x", "--difficulty", "1"])   # 100 possible prompts: many repeats
    held_out = {r["prompt"] for r in warmup.eval_rows(args)}
    rows = warmup.train_rows(args, 200, exclude=held_out)
    assert rows and not held_out & {r["prompt"] for r in rows}


def test_sft_steps_reduce_the_loss():
    args = warmup.parse_args(["--out", "x", *TINY, "--lr", "3e-3", "--warmup-steps", "1"])
    tokenizer = warmup.char_tokenizer()
    net = warmup.build_model(args, tokenizer)
    batch = warmup.collate([warmup.encode(tokenizer, r) for r in make_task("arithmetic", 32, seed=0)],
                           tokenizer.pad_token_id)
    with torch.no_grad():
        before = net(batch[0], labels=batch[1]).loss.item()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(15):
        loss = net(batch[0], labels=batch[1]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = net(batch[0], labels=batch[1]).loss.item()
    assert after < 0.8 * before


def test_main_saves_a_folder_that_reloads(tmp_path):
    out, threads = tmp_path / "warm", torch.get_num_threads()
    try:
        report = warmup.main(["--out", str(out), *TINY, "--steps", "3"])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((out / "warmup_report.json").read_text())
    assert saved["steps"] == 3 and saved["rl_config"]["data.task"] == "arithmetic"
    assert saved["held_out"]["max_tokens"] == report["rl_config"]["rollout.max_tokens"] == 5
    assert all(0 <= saved["held_out"][k] <= 1 for k in ("greedy_accuracy", "pass@2", "mixed_prompts"))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "KimiLinearForCausalLM"
    assert tokenizer.eos_token_id == model.config.eos_token_id == 2
    ids = torch.tensor([tokenizer("12+34=").input_ids])
    assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)
