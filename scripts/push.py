"""Upload a repo folder written by scripts/finetune.py (its <output-dir>/repo) to the Hub as one commit.

    python scripts/push.py outputs/bcos-vit-s/repo --hub-model-id my-org/bcos-vit-s [--private]

Used to retry a push that failed after training: the folder is complete and untouched by the failure. The folder
must hold what a loaded model needs (config, safetensors weights, the remote code its config names, README.md), and
the commit makes the Hub repo equal to it: files of an earlier push that the folder does not hold are deleted.
"""

import argparse
import sys

from bcos_zoo.zoo.cli import run_script
from bcos_zoo.zoo.hub import check_push_access, check_repo_folder, push_folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the repo folder a run wrote (its <output-dir>/repo)")
    parser.add_argument("--hub-model-id", required=True, help="the Hub repo to create or update: <org>/<name>")
    parser.add_argument("--private", action="store_true", help="create the repo as a private one")
    args = parser.parse_args(argv)
    folder = check_repo_folder(args.folder)
    check_push_access(args.hub_model_id)
    print(push_folder(folder, args.hub_model_id, private=args.private))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
