"""Train one (task, model) configuration.

    python -m experiments.train                      # S5 on MNIST-1D (offline), the main job
    python -m experiments.train --config experiments/configs/lra/listops.py:s5 \\
        --workdir runs/listops-s5 --config.model.d_model=64

``--config PATH[:VARIANT]`` names a config file whose ``get_config(variant)`` returns an
``ssmjax.train.Config``; ``--config.a.b=value`` overrides any field. A ``--workdir`` that
already holds a checkpoint is resumed.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from ssmjax.train import Config, apply_overrides, train_and_evaluate

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "mnist1d.py") + ":s5"


def load_config(spec: str) -> Config:
    """Loads ``path/to/config.py[:variant]``."""
    path, _, variant = spec.partition(":")
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"config file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant or None)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m experiments.train",
        description=__doc__.split("\n\n")[0],
        epilog="Any --config.<field>=<value> overrides that field of the config.",
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file[:variant]")
    parser.add_argument("--workdir", default=None, help="checkpoints and metrics go here")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognised argument {item!r}")
        overrides.append(item.removeprefix("--config."))
    config = apply_overrides(load_config(args.config), overrides)
    print(f"config {args.config}: {config.name}")
    summary = train_and_evaluate(config, args.workdir)
    final = summary["final"]["test"]
    print(json.dumps({k: v for k, v in summary.items() if k != "final"}, indent=1))
    line = f"test accuracy {final['accuracy']:.4f} after {summary['steps']} steps"
    if summary["final"]["val"] != final:  # a separate validation split exists
        line += f" (at best validation: {summary['test_accuracy_at_best_val']:.4f})"
    print(f"{line} in {summary['seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()
