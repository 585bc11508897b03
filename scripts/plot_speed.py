"""Draw what the benchmark CSVs collected: one PNG per CSV, one panel per figure, every run of every model.

    python scripts/plot_speed.py docs/speed/vit.csv docs/speed/cnn.csv      # writes docs/speed/vit.png, cnn.png

The CSVs are written by ``scripts/benchmark.py --csv`` and ``scripts/benchmark_cnn.py --csv``. Each panel shows one
ratio per model and setting (device, dtype, compiled or not, fast paths on or off): a dot per run, a bar at their
median, and the row's target as a dashed line (ratios must reach it; explanation / forward and memory must stay under
it). A figure no run measured gets no panel; the speed-ups over the authors' package have no target.
"""

import argparse
import csv
import statistics
import sys
from pathlib import Path

import matplotlib

from bcos_zoo.zoo.cli import run_script


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


PANELS = (
    ("forward_ratio", "forward: B-cos / source throughput", "forward_target"),
    ("class_token_forward_ratio", "forward, last block on the class token alone: B-cos / source", "forward_target"),
    ("explain_over_forward", "one explanation, in B-cos forward passes", "explain_target"),
    ("step_ratio", "training step: B-cos / source throughput", "step_target"),
    ("trainer_ratio", "Trainer fine-tuning: B-cos / source throughput", "trainer_target"),
    ("memory_extra_growth_pct", "extra resident-set growth, % of B-cos weights", None),
    ("memory_extra_held_pct", "extra held tensors, % of B-cos weights", "memory_target"),
    ("authors_forward_speedup", "forward: speed-up over the authors' bcos package", None),
    ("authors_class_token_speedup", "forward, class token alone: speed-up over the authors' package", None),
    ("authors_explain_speedup", "explanation: speed-up over the authors' bcos package", None),
)


def category(row: dict[str, str]) -> str:
    """The x position of a row: its model and the setting it ran in."""
    setting = f"{row['device']} {row['dtype']}"
    if row["compile"] == "True":
        setting += " compiled"
    if row["fast_paths"] == "off":
        setting += " reference"
    return f"{row['model']}\n{setting}"


def values(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


def plot(csv_path: Path, png_path: Path) -> Path:
    """One PNG of ``csv_path``'s runs; returns where it went."""
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    if missing := {"model", "device", "dtype", "compile", "fast_paths"} - set(reader.fieldnames or ()):
        raise ValueError(f"{csv_path} is not a benchmark CSV (no {', '.join(sorted(missing))} column)")
    if not rows:
        raise ValueError(f"{csv_path} holds no runs")
    categories = list(dict.fromkeys(category(row) for row in rows))
    grouped = {name: [row for row in rows if category(row) == name] for name in categories}
    panels = [panel for panel in PANELS if values(rows, panel[0])]
    figure, axes = plt.subplots(
        len(panels), 1, figsize=(max(6.0, 1.6 * len(categories)), 2.4 * len(panels)), sharex=True, squeeze=False
    )
    for ax, (key, title, target_key) in zip(axes[:, 0], panels):
        for x, name in enumerate(categories):
            measured = values(grouped[name], key)
            if measured:
                ax.plot([x] * len(measured), measured, "o", color="tab:blue", alpha=0.5, markersize=4)
                ax.hlines(statistics.median(measured), x - 0.25, x + 0.25, colors="tab:blue", linewidth=2)
            for target in set(values(grouped[name], target_key)) if measured and target_key else ():
                ax.hlines(target, x - 0.4, x + 0.4, colors="tab:red", linestyles="--", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xticks(range(len(categories)), categories, fontsize=7)
    axes[-1, 0].set_xlim(-0.6, len(categories) - 0.4)
    figure.suptitle(f"{csv_path.name}: {len(rows)} rows (dots: runs, bar: median, dashed: target)", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.12 / figure.get_figheight()))  # room for the title
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return png_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", type=Path, help="CSV files written by the benchmark scripts' --csv")
    parser.add_argument("--output-dir", type=Path, help="where the PNGs go (default: beside each CSV)")
    args = parser.parse_args()
    pictures = [(args.output_dir or csv_path.parent) / f"{csv_path.stem}.png" for csv_path in args.csv]
    if len(set(pictures)) < len(pictures):  # two CSVs of one name into one folder: the second would overwrite
        raise ValueError(
            f"two of the CSVs would be drawn to one file ({', '.join(map(str, pictures))}): plot them apart"
        )
    for csv_path, picture in zip(args.csv, pictures):
        picture.parent.mkdir(parents=True, exist_ok=True)
        print(plot(csv_path, picture))


if __name__ == "__main__":
    sys.exit(run_script(main))
