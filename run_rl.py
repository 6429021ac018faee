"""deltarl: RL post-training of hybrid linear-attention models.

    python run_rl.py --config configs/tiny_cpu.yaml [key.sub=value ...]   # train (or resume=RUN_DIR)
    python run_rl.py plot RUN_DIR                                       # PNG curves of a run
    python run_rl.py summary RUN_DIR [WINDOW]                           # windowed means, markdown
    python run_rl.py demo                                               # the model demo

Without RAY_ADDRESS a local Ray is started; with it (or under `ray job submit`) the job joins the cluster.
"""
import argparse
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plot"]:
        from rl.monitor import plot_run
        for path in plot_run(argv[1]):
            print(path)
        return 0
    if argv[:1] == ["summary"] and len(argv) >= 2:
        from rl.monitor import summarize_run
        print(summarize_run(argv[1], *(int(w) for w in argv[2:3])), end="")
        return 0
    if argv[:1] == ["demo"]:
        from model.demo import main as model_demo
        return model_demo(*argv[1:2])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny_cpu.yaml", help="YAML run configuration")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.n=4 run.steps=10")
    args = parser.parse_args(argv)
    overrides = [o if "=" not in o or not o.startswith("resume=") else "run." + o for o in args.overrides]

    from rl.config import ConfigError, load_config
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    from rl.trainer import train
    run_dir = train(cfg)
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
