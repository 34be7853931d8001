"""``mdeq synth imagenet|cityscapes``: write synthetic data in the raw on-disk layouts."""

from __future__ import annotations

import argparse


def _size(text: str) -> tuple[int, int]:
    """'32' -> (32, 32); '500x375' -> (500, 375)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be S or WxH, got {text!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"size must be S or WxH, got {text!r}")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("synth", help="write synthetic ImageNet/Cityscapes in their raw layouts")
    kinds = parser.add_subparsers(dest="dataset", metavar="DATASET")
    kinds.required = True
    imagenet = kinds.add_parser("imagenet", help="train/<wnid>/*.JPEG, flat val/ + LOC_val_solution.csv")
    imagenet.add_argument("--out", required=True, help="directory to write (the ILSVRC-2012 root)")
    imagenet.add_argument("--classes", type=int, default=10)
    imagenet.add_argument("--train-per-class", type=int, default=300)
    imagenet.add_argument("--val-per-class", type=int, default=50)
    imagenet.add_argument("--size", type=_size, default=(32, 32), help="S or WxH (default 32)")
    imagenet.add_argument("--val-layout", choices=("flat", "folders"), default="flat")
    imagenet.add_argument("--seed", type=int, default=0)
    imagenet.set_defaults(func=_imagenet)
    cityscapes = kinds.add_parser("cityscapes", help="leftImg8bit/ + gtFine/ labelIds with real label ids")
    cityscapes.add_argument("--out", required=True, help="directory to write (the Cityscapes root)")
    cityscapes.add_argument("--train", type=int, default=100)
    cityscapes.add_argument("--val", type=int, default=20)
    cityscapes.add_argument("--size", type=_size, default=(256, 128), help="WxH (default 256x128)")
    cityscapes.add_argument("--seed", type=int, default=0)
    cityscapes.set_defaults(func=_cityscapes)


def _imagenet(args: argparse.Namespace) -> int:
    from data_pipelines import synth_imagenet

    summary = synth_imagenet(args.out, classes=args.classes, train_per_class=args.train_per_class,
                             val_per_class=args.val_per_class, size=args.size, seed=args.seed,
                             val_layout=args.val_layout)
    print(f"wrote {summary.train_images} train and {summary.val_images} val images of {summary.classes} "
          f"classes to {summary.out}")
    return 0


def _cityscapes(args: argparse.Namespace) -> int:
    from data_pipelines import synth_cityscapes

    summary = synth_cityscapes(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed)
    print(f"wrote {summary['train']} train and {summary['val']} val scenes to {summary['out']}")
    return 0
