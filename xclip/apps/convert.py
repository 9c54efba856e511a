"""``xclip convert IN OUT --to {hf,official}``: convert X-CLIP checkpoints between formats.

IN is anything :func:`xclip.load_pretrained` reads (an OpenAI CLIP checkpoint,
an official X-CLIP ``.pth``, a Hugging Face directory). ``--to hf`` writes a
directory that transformers' ``XCLIPModel.from_pretrained`` loads; ``--to
official`` writes ``{"model": state_dict, "config": {...}}`` in the official
key layout (a plain dict config, readable without yacs).
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xclip convert", description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="checkpoint file or Hugging Face directory")
    p.add_argument("output", help="output directory (--to hf) or file (--to official)")
    p.add_argument("--to", required=True, choices=("hf", "official"), help="output format")
    p.add_argument("--num-frames", type=int, default=None,
                   help="frames of the output model (interpolates the MIT positional embedding)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from xclip.model.checkpoints import load_pretrained, save_checkpoint

    try:
        model = load_pretrained(args.input, num_frames=args.num_frames)
        if args.to == "hf":
            model.save_pretrained(args.output)
        else:
            save_checkpoint(model, args.output)
    except ValueError as e:
        from xclip.apps.cli import user_error

        return user_error("xclip convert", e)
    n = sum(p.numel() for p in model.parameters())
    c = model.config
    print(f"converted {args.input} -> {args.output} ({args.to}): {c.arch or 'custom'} {c.num_frames} frames, "
          f"{n / 1e6:.2f}M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
