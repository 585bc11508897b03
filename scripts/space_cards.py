"""Re-render the README header of every Space in spaces/ from hub_cards/space_card.md and the recipe catalogue.

    python scripts/space_cards.py

The text below each header is kept; the header (title, sdk and its version, app file, models, licence) is
rewritten, so it names the installed Gradio and the zoo's current model repos.
"""

import argparse
import sys
from pathlib import Path

from bcos_zoo.zoo.cards import SPACES, render_space_card, space_card_body
from bcos_zoo.zoo.cli import run_script


SPACES_DIR = Path(__file__).resolve().parents[1] / "spaces"


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for name in SPACES:
        readme = SPACES_DIR / name / "README.md"
        card = render_space_card(name, space_card_body(readme.read_text(encoding="utf-8")))
        readme.write_text(str(card), encoding="utf-8")
        print(f"wrote {readme}")


if __name__ == "__main__":
    sys.exit(run_script(main))
