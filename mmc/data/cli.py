"""``mmc data``: make, download and version datasets."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    synthetic = sub.add_parser(
        "synthetic",
        help="generate the synthetic scenes dataset (VOC 2012 layout + unlabelled images)",
        description="Generate the synthetic scenes dataset. Options default to the config's `synthetic` "
        "section (or the schema's defaults without --config); flags override both.",
    )
    synthetic.add_argument("--out", required=True, help="output directory (replaced atomically)")
    synthetic.add_argument("--config", help="a YAML config whose `synthetic` section gives the defaults")
    synthetic.add_argument("--images", type=int, help="labelled images (train + val)")
    synthetic.add_argument("--unlabelled", type=int, help="unlabelled images for pretraining")
    synthetic.add_argument("--size", type=int, help="image side in pixels")
    synthetic.add_argument("--seed", type=int, help="random seed")
    synthetic.set_defaults(func=_synthetic)


def _synthetic(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from mmc import config
    from mmc.data import synthetic

    section = config.load(args.config).synthetic if args.config else config.section_defaults("synthetic")
    spec = synthetic.SyntheticSpec.from_config(section)
    flags = {"images": args.images, "unlabelled_images": args.unlabelled, "size": args.size, "seed": args.seed}
    spec = dataclasses.replace(spec, **{k: v for k, v in flags.items() if v is not None})
    # the flags obey the same bounds as the config file
    config.resolve({"run_name": "flags", "synthetic": config.to_dict(dataclasses.asdict(spec))}, where="flags")
    start = time.perf_counter()
    out = synthetic.generate(args.out, spec)
    print(f"wrote {spec.images} labelled + {spec.unlabelled_images} unlabelled images of {spec.size} px "
          f"to {out} in {time.perf_counter() - start:.1f} s")
    return 0
