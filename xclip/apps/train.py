"""``xclip train CONFIG [key=value ...]``.

Run it directly for one process, or under torchrun for several (one node or
many); the process group is read from torchrun's environment::

    xclip train configs/k400/b16_8f.yaml data.root=/data/k400 model.pretrained=ViT-B-16.pt
    torchrun --nproc_per_node=8 -m xclip train configs/k400/b16_8f.yaml train.resume=auto
"""

from __future__ import annotations

import argparse
import sys

from xclip.config import dump_config, load_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xclip train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-5 train.resume=auto output=runs/x")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from xclip.apps.cli import user_error

    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as e:
        return user_error("xclip train", e)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from xclip.engine.trainer import NonFiniteLossError, train

    try:
        summary = train(cfg)
    except NonFiniteLossError as e:
        print(f"xclip train: {e}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as e:  # empty list, bad label, missing resume path, unwritable output, disk full
        return user_error("xclip train", e)
    if summary.get("test"):
        t = summary["test"]
        print(f"final test ({t['views']} views): top1 {t['top1']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
