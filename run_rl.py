"""deltarl: RL post-training of hybrid linear-attention models.

    python run_rl.py --config configs/tiny_cpu.yaml [key.sub=value ...]   # train (or resume=RUN_DIR)
    python run_rl.py plot RUN_DIR                                       # PNG curves of a run
    python run_rl.py summary RUN_DIR [WINDOW]                           # windowed means, markdown
    python run_rl.py demo                                               # the model demo

Without RAY_ADDRESS a local Ray is started; with it (or under `ray job submit`) the job joins the cluster.
"""
import argparse
import sys


def look_at_run(command, *args):
    """`plot RUN_DIR` (PNG curves) or `summary RUN_DIR [WINDOW]` (markdown means) of a run's metrics."""
    most = 2 if command == "summary" else 1
    run_dir = args[0] if args else None
    window = args[1] if len(args) > 1 else "10"
    if not 1 <= len(args) <= most or not window.isdigit() or int(window) < 1:
        extra = " [WINDOW, steps per row >= 1]" if command == "summary" else ""
        print(f"usage: run_rl.py {command} RUN_DIR{extra}", file=sys.stderr)
        return 2
    from deltarl.rl.monitor import plot_run, summarize_run
    try:
        if command == "plot":
            print("\n".join(str(path) for path in plot_run(run_dir)))
        else:
            print(summarize_run(run_dir, int(window)), end="")
    except FileNotFoundError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["plot"], ["summary"]):
        return look_at_run(*argv)
    if argv[:1] == ["demo"]:
        from deltarl.model.demo import main as model_demo
        return model_demo(*argv[1:2])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny_cpu.yaml", help="YAML run configuration")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.n=4 run.steps=10")
    args = parser.parse_args(argv)
    overrides = [o if "=" not in o or not o.startswith("resume=") else "run." + o for o in args.overrides]

    from deltarl.rl.config import ConfigError, load_config
    from deltarl.rl.recovery import RunFailure
    try:
        cfg = load_config(args.config, overrides)
        from deltarl.rl.trainer import train
        run_dir = train(cfg)
    except ConfigError as error:        # the config, or a setting only the data shows wrong (rollout.max_model_len)
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except RunFailure as error:
        print(f"run stopped: {error}", file=sys.stderr)
        return 3
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
