"""The RL loop end to end with the sampling-side settings of issue 17: top-k / top-p rollouts (the learner's
logprobs under the same filter, so TIS weights stay at 1), KL as a reward on the learner's logprobs, and
dynamic sampling refilled by groups_needed and cut to prompts_per_step groups."""
from tests.test_rl_loop import SMALL, metrics_by_step, run_dir_of, run_rl


def test_filtered_rollouts_kl_reward_and_dynamic_sampling(tmp_path):
    proc = run_rl([*SMALL, "run.steps=2", "run.eval_every=0", "run.save_every=0", f"run.output_dir={tmp_path}",
                   "rollout.top_k=20", "rollout.top_p=0.9", "rollout.temperature=0.9",
                   "algorithm.advantage=reinforce_pp_baseline", "algorithm.kl_mode=reward",
                   "algorithm.kl_coef=0.05", "algorithm.dynamic_sampling=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = metrics_by_step(run_dir_of(proc.stdout))
    for s in (1, 2):
        m = steps[s]
        assert abs(m["actor/tis_weight_mean"] - 1.0) < 1e-4, m["actor/tis_weight_mean"]
        assert m["rollout/generated_prompts"] >= 4 and 1 <= m["rollout/rounds"] <= 4
        assert "actor/kl" not in m                     # the KL went into the reward, not the loss
