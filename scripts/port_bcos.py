"""Port the B-cos models released with the authors' `bcos` package to Hub repos: weights (safetensors), config,
remote code, the entry's image processor and a model card (the authors' numbers, the measured conversion error).

    python scripts/port_bcos.py --entry resnet50 --weights resnet_50-ead259efe4.pth --dry-run
    python scripts/port_bcos.py --entry resnet50 --weights resnet_50-ead259efe4.pth --hub-model-id org/name --push
    python scripts/port_bcos.py --all ~/.cache/torch/hub/checkpoints --hub-org my-org --push

Release files: `bcos.models.pretrained.<entry>(pretrained=True)` downloads them into torch.hub's cache
(~/.cache/torch/hub/checkpoints); this script only reads them. With --all, each file is matched to its entry by the
package's own file name (docs/zoo.md lists them); other files are reported and skipped. <output-dir>/<entry> is the
exact tree that --push uploads as one commit; --dry-run writes and lists it, and uploads nothing.
"""

import argparse
import shlex
import sys
from pathlib import Path

from bcos_zoo.zoo.cli import USER_ERRORS, at_least, run_script


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--entry", help="a B-cos torch.hub entry of the bcos package, e.g. resnet50 (see docs/zoo.md)")
    what.add_argument("--all", metavar="DIR", type=Path, help="port every release file in DIR")
    parser.add_argument("--weights", type=Path, help="with --entry: its release file")
    parser.add_argument("--hub-model-id", help="with --entry: org/name (default: bcos-zoo/bcos-v2-<entry>)")
    parser.add_argument("--hub-org", help="with --all: the org of the repos, each named bcos-v2-<entry>")
    upload = parser.add_mutually_exclusive_group()
    upload.add_argument("--push", action="store_true", help="upload each repo folder to the Hub as one commit")
    upload.add_argument("--dry-run", action="store_true", help="write and list each repo folder, upload nothing")
    parser.add_argument("--private", action="store_true", help="with --push: create the Hub repos as private")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bcos-v2"), help="default: outputs/bcos-v2")
    parser.add_argument(
        "--check-images",
        type=at_least(1),
        default=2,
        help="random images the conversion error is measured on (default 2)",
    )
    args = parser.parse_args(argv)
    if args.entry and args.weights is None:
        parser.error("--entry needs --weights FILE, its release file")
    if args.all and (args.weights or args.hub_model_id):
        parser.error("--all takes no --weights or --hub-model-id: each file names its entry, each repo is "
                     "<hub-org>/bcos-v2-<entry>")  # fmt: skip
    if args.entry and args.hub_org:
        parser.error("--hub-org goes with --all; with --entry, give --hub-model-id org/name")
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, Path, str]]:
    """(entry, release file, Hub id) of each model to port; files of --all that are not ported are reported."""
    from bcos_zoo.zoo.bcos_releases import DEFAULT_ORG, default_repo_id, get_release, release_of_file, twin_recipe_hint

    if args.entry:
        release = get_release(args.entry)  # an unknown entry or a standard twin: a one-line error
        if not args.weights.is_file():
            raise FileNotFoundError(f"--weights {args.weights}: no such file (the release file of {args.entry} is "
                                    f"{release.file_name})")  # fmt: skip
        named = release_of_file(args.weights)
        if named is not None and named.entry != args.entry:
            raise ValueError(
                f"{args.weights.name} is the release file of {named.entry}, not of {args.entry} (whose release file "
                f"is {release.file_name})."
            )
        return [(args.entry, args.weights, args.hub_model_id or default_repo_id(args.entry))]
    if not args.all.is_dir():
        raise NotADirectoryError(f"--all {args.all}: not a folder of release files")
    jobs = []
    for path in sorted(p for p in args.all.iterdir() if p.is_file() and not p.name.startswith(".")):
        release = release_of_file(path)
        if release is None:
            print(f"skipped {path.name}: not the file name of any bcos release (docs/zoo.md lists them)")
        elif release.standard:
            print(
                f"skipped {path.name}: {release.entry} is a standard (not B-cos) model; it is a B-cosification "
                f"source: {twin_recipe_hint(release.entry)}"
            )
        else:
            jobs.append((release.entry, path, default_repo_id(release.entry, args.hub_org or DEFAULT_ORG)))
    if not jobs:
        raise ValueError(f"--all {args.all}: no release file of a B-cos entry there; nothing was ported.")
    return jobs


def port_one(args: argparse.Namespace, entry: str, weights: Path, repo_id: str) -> list[str]:
    """Port one release file (and push or list it); the lines that report it."""
    from bcos_zoo.zoo.bcos_releases import port_release
    from bcos_zoo.zoo.hub import describe_tree, push_folder

    command = shlex.join(["python", "scripts/port_bcos.py", "--entry", entry, "--weights", weights.name])
    command += f" --hub-model-id {shlex.quote(repo_id)}"
    port = port_release(entry, weights, repo_id, args.output_dir / entry, args.check_images, command)
    lines = [
        f"{entry}: {port.folder} ({port.parameters / 1e6:.2f}M parameters)",
        f"  conversion error on {args.check_images} random images: {port.error.describe()}",
    ]
    if not port.sha256_matches:
        lines.append(f"  note: {weights.name} is not the released file (its SHA-256 does not start with "
                     f"{port.release.sha256_prefix}); the card says so")  # fmt: skip
    if args.dry_run:
        lines.append(f"  dry run: the exact tree a push to {repo_id} would upload:")
        lines.extend(f"    {line}" for line in describe_tree(port.folder))
    elif args.push:
        message = f"Port of the bcos package's {entry} ({port.release.file_name})"
        lines.append(f"  pushed: {push_folder(port.folder, repo_id, private=args.private, commit_message=message)}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        jobs = plan(args)
    except ImportError as error:  # the bcos package (and einops) describe and build the released models
        print(f"error: {error}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm
    from transformers.utils import logging

    from bcos_zoo.zoo.hub import check_push_access

    if args.push:
        check_push_access(jobs[0][2])  # before any work: the token, and the Hub being there
    failed, bars = [], logging.is_progress_bar_enabled()
    if args.all:
        logging.disable_progress_bar()  # one bar, over the models (saving each one is quick)
    try:
        for entry, weights, repo_id in (bar := tqdm(jobs, desc="porting", unit="model", disable=not args.all)):
            bar.set_postfix_str(entry)
            try:
                tqdm.write("\n".join(port_one(args, entry, weights, repo_id)), file=sys.stdout)
            except USER_ERRORS as error:  # with --all, one file that fails does not stop the others
                if not args.all:
                    raise
                failed.append(entry)
                tqdm.write(f"error: {weights.name}: {' '.join(str(error).split())}", file=sys.stderr)
    finally:
        if bars:
            logging.enable_progress_bar()
    if failed:
        print(f"error: {len(failed)} of {len(jobs)} failed: {', '.join(failed)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
