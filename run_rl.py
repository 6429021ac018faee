"""deltarl entry point.

Until the RL loop lands (issue 6), this runs the model demo: a small hybrid Kimi Linear built, saved as a
transformers checkpoint, reloaded, decoded with its recurrent cache, and its cache saving tabulated.
"""
import argparse
import sys

from model.demo import main as model_demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo_model.yaml", help="YAML file of the demo")
    args = parser.parse_args(argv)
    return model_demo(args.config)


if __name__ == "__main__":
    sys.exit(main())
