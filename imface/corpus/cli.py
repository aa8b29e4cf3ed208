"""``python -m imface synth --out DIR``: the FaceScape-like synthetic corpus of
imface/corpus/synth.py, written with a progress bar."""

from __future__ import annotations

from pathlib import Path

from imface.corpus import anny_head
from imface.corpus.synth import Recipe, identity_name, write_corpus
from imface.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--identities", type=int, default=20, help="number of people")
    parser.add_argument("--out", required=True, help="output folder (FaceScape TU layout)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the people and scans")
    parser.add_argument(
        "--first",
        type=int,
        default=1,
        help="number of the first person: --first 49 with the same seed adds new people to a "
        "corpus of 48 (prepare both folders into one cache)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes")
    parser.add_argument(
        "--extra",
        type=int,
        default=2,
        help="random extra expressions per person (besides the 20 FaceScape)",
    )
    parser.add_argument(
        "--expressions",
        help="comma-separated subset of the 20 FaceScape expressions (default: all)",
    )
    parser.add_argument(
        "--subdivisions",
        type=int,
        default=2,
        help="Loop subdivisions of the Anny mesh before adding detail",
    )
    parser.add_argument(
        "--population",
        choices=anny_head.POPULATIONS,
        default="mixed",
        help="moderate: near the average face (the first corpus); wide: Anny's whole adult range; "
        "mixed: each person one or the other",
    )
    parser.add_argument(
        "--variants",
        type=float,
        default=0.0,
        help="fraction of scans made as a scanner gives them (light noise, small holes)",
    )
    parser.add_argument(
        "--no-eyeballs",
        action="store_true",
        help="leave Anny's empty eye sockets instead of eyeballs",
    )


def run(args) -> int:
    if args.identities < 1:
        raise UserError("--identities must be at least 1")
    if args.first < 1:
        raise UserError("--first is a person number, from 1")
    if not 0.0 <= args.variants <= 1.0:
        raise UserError("--variants is a fraction of the scans, between 0 and 1")
    only = args.expressions.split(",") if args.expressions else None
    recipe = Recipe(
        seed=args.seed,
        extra=args.extra,
        subdivisions=args.subdivisions,
        only=None if only is None else tuple(only),
        population=args.population,
        eyeballs=not args.no_eyeballs,
        variants=args.variants,
    )
    keys = write_corpus(Path(args.out), args.identities, recipe, max(1, args.workers), args.first - 1)
    last = identity_name(args.first - 2 + args.identities)
    print(f"wrote {len(keys)} scans of people {identity_name(args.first - 1)}-{last} to {args.out}")
    return 0
