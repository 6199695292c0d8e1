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

    download = sub.add_parser(
        "download",
        help="download, verify and extract a dataset of the config's `datasets` registry",
        description="Download every archive of datasets.NAME into {data_dir}/downloads (resuming partial "
        "files), verify size and checksum (or pin the sha256 when none is published), extract safely so "
        "that datasets.NAME.root appears complete, and write {data_dir}/manifests/NAME.json last. "
        "A rerun with a complete manifest does nothing.",
    )
    download.add_argument("name", metavar="NAME", help="a key of `datasets` in the config")
    download.add_argument("--config", required=True, help="the YAML config")
    _add_download_options(download)
    download.set_defaults(func=_download)

    checkpoint = sub.add_parser(
        "fetch-checkpoint",
        help="download and verify a `source: url` model's checkpoint",
        description="Download models.MODEL.url to {data_dir}/checkpoints/MODEL.pth and verify its sha256 "
        "(without one in the config, the first download's sha256 is pinned in {data_dir}/manifests/pins.json).",
    )
    checkpoint.add_argument("model", metavar="MODEL", help="a key of `models` in the config")
    checkpoint.add_argument("--config", required=True, help="the YAML config")
    _add_download_options(checkpoint)
    checkpoint.set_defaults(func=_fetch_checkpoint)

    version = sub.add_parser(
        "version",
        help="version {data_dir} with DVC (dvc add + push) and print its hash",
        description="Set up DVC in the current repository from the config's `dvc` section (remote, cache "
        "type, hardlink lock), `dvc add` the data directory (writing DATA_DIR.dvc), push it to the "
        "default remote and print the tree's .dir md5 (the dataset provenance id).",
    )
    version.add_argument("--config", required=True, help="the YAML config")
    version.add_argument("--no-push", action="store_true", help="only `dvc add`, do not push")
    version.set_defaults(func=_version)

    shard = sub.add_parser(
        "shard",
        help="pack an image folder into tar shards with an index and a manifest (large pretraining data)",
        description="Pack the images of SRC (class sub-folders or flat, in the order pretraining reads the "
        "folder) into OUT/shard-NNNNNN.tar of about --shard-size each, with OUT/index.npy (random access), "
        "OUT/keys.txt and OUT/manifest.json (shard sha256s, sample counts), written last. Shards are "
        "written atomically; an interrupted run resumes after its last complete shard; a complete OUT "
        "of the same source is left as it is. Point pretrain.data.path at OUT.",
    )
    shard.add_argument("src", metavar="SRC", help="image folder")
    shard.add_argument("out", metavar="OUT", help="shard directory to write")
    _add_shard_size(shard)
    shard.set_defaults(func=_shard)

    check = sub.add_parser(
        "check-shards",
        help="verify a shard directory against its manifest (sizes and sha256)",
        description="Recompute the sha256 of every shard, the index and the key list of DIR and compare "
        "them with DIR/manifest.json.",
    )
    check.add_argument("dir", metavar="DIR", help="shard directory")
    check.set_defaults(func=_check_shards)

    prepare = sub.add_parser(
        "prepare",
        help="verify ImageNet-1k archives you already have and write them as shards",
        description="Verify the official ILSVRC 2012 archives in --from (ILSVRC2012_img_train.tar required; "
        "ILSVRC2012_img_val.tar with ILSVRC2012_devkit_t12.tar.gz optional) by md5 while streaming them, and "
        "write OUT/train (and OUT/val) as shard directories, labels = index of the sorted WordNet ids. "
        "Nothing is downloaded (see docs/datasets.md, ImageNet-1k).",
    )
    prepare.add_argument("dataset", choices=["imagenet"], help="the dataset")
    prepare.add_argument("--from", dest="src", required=True, help="directory holding the archives")
    prepare.add_argument("--out", required=True, help="output directory (gets train/ and val/)")
    _add_shard_size(prepare)
    for split in ("train", "val", "devkit"):
        prepare.add_argument(f"--md5-{split}", help=f"expected md5 of the {split} archive instead of the official one "
                             "(for a re-packed copy; also skips the size check)")  # fmt: skip
    prepare.set_defaults(func=_prepare)


def parse_bytes(text: str) -> int:
    """'1GB' -> 10**9, '512MiB' -> 512 * 2**20, '4096' -> 4096."""
    import re

    from mmc.errors import MMCError

    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise MMCError(f"--shard-size: {text!r} is not a size (e.g. 1GB, 512MiB, 100000)")
    return int(float(match.group(1)) * units[(match.group(2) or "").upper()])


def _add_shard_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shard-size", default="1GB", help="target bytes per shard (default %(default)s)")


def _shard(args: argparse.Namespace) -> int:
    from mmc.data import shards

    shard_bytes = parse_bytes(args.shard_size)
    items, source, classes = shards.folder_items(args.src)
    manifest = shards.write_shards(items, args.out, source, shard_bytes, classes)
    _print_manifest(manifest)
    return 0


def _check_shards(args: argparse.Namespace) -> int:
    from mmc.data import shards

    manifest = shards.verify(args.dir, full=True)
    print(f"{args.dir}: {manifest['samples']} images in {len(manifest['shards'])} shards match {shards.MANIFEST}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from mmc.data import imagenet

    md5 = {"train": args.md5_train, "val": args.md5_val, "devkit": args.md5_devkit}
    for manifest in imagenet.prepare(args.src, args.out, md5, parse_bytes(args.shard_size)).values():
        _print_manifest(manifest)
    return 0


def _print_manifest(path) -> None:
    import json

    manifest = json.loads(path.read_text())
    print(f"{path}: {manifest['samples']} images, {len(manifest['shards'])} shards, "
          f"{manifest['total_bytes'] / 1e6:.1f} MB")  # fmt: skip


def _add_download_options(parser: argparse.ArgumentParser) -> None:
    from mmc.data.download import DEFAULT_BACKOFF_S, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S

    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="extra attempts after a failure (default %(default)s)")
    parser.add_argument("--backoff", type=float, default=DEFAULT_BACKOFF_S, help="first pause in seconds, doubled each retry (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="network timeout in seconds (default %(default)s)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr (default: on a terminal only)")


def _download_options(args: argparse.Namespace) -> dict:
    from mmc.errors import MMCError

    if args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
        raise MMCError("--retries and --backoff must be >= 0 and --timeout > 0")
    return {"retries": args.retries, "backoff_s": args.backoff, "timeout_s": args.timeout, "progress": args.progress}


def _download(args: argparse.Namespace) -> int:
    from mmc import config
    from mmc.data.fetch import fetch_dataset

    manifest = fetch_dataset(config.load(args.config), args.name, **_download_options(args))
    print(manifest)
    return 0


def _fetch_checkpoint(args: argparse.Namespace) -> int:
    from mmc import config
    from mmc.data.fetch import fetch_checkpoint

    path = fetch_checkpoint(config.load(args.config), args.model, **_download_options(args))
    print(path)
    return 0


def _version(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmc import config, dvc, tracking
    from mmc.errors import MMCError

    cfg = config.load(args.config)
    repo = Path.cwd()
    data = Path(cfg.data_dir)
    if data.is_absolute() or ".." in data.parts or not data.is_dir():
        raise MMCError(f"data_dir: {cfg.data_dir!r} must be an existing directory inside the repository ({repo})")
    with tracking.job("version_data", cfg, config_path=args.config) as rec, dvc.locked(repo, cfg.dvc) as store:
        target = (repo / data).relative_to(store.root).as_posix()
        # the extracted trees are versioned; their archives are not, a second time (docs/datasets.md)
        dvc.ensure_ignored(store.root, [f"{dvc.anchored(store.root, repo / data / 'downloads')}/"],
                           "mmc data version: downloaded archives (their sha256 are in the manifests)")
        dvc_file = dvc.add(store.root, target)
        if not args.no_push:
            dvc.push(store.root, f"{target}.dvc", remote=store.remote)
        digest = dvc.dataset_hash(store.root, f"{target}.dvc")
        rec.set_tags({"mmc.dataset_dvc_md5": digest, "dvc.remote": store.url if not args.no_push else "(not pushed)"})
        rec.produced(dvc_file)
    print(f"{dvc_file.name} {digest}")
    return 0


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
