"""B-cosify a ViT, check that it is exact, explain sample photos, and save a folder that loads with transformers.

    python scripts/demo.py                                  # a ViT-S/16-shaped source built here
    python scripts/demo.py --source google/vit-base-patch16-224 --images my_photos/

The default source has random weights (no weights are downloaded): its explanations show the mechanics, not a
trained model's reasoning. Outputs under --output-dir: the standard source, the B-cos model folder, and one
explanation panel (input | colour explanation | contribution map) per image.
"""

import argparse
import time
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification, ViTImageProcessor

from bcos_zoo import BcosViTForImageClassification
from bcos_zoo.visualize import explanation_panel, load_image


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def build_default_source(folder: Path) -> Path:
    """A ViT-S/16 image classifier laid out as a Hub checkpoint (weights, config, normalising processor)."""
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD).save_pretrained(folder)
    return folder


def sample_images(folder: Path | None) -> dict[str, Image.Image]:
    if folder is not None:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
        return {p.stem: load_image(p) for p in paths}
    import skimage.data

    return {name: Image.fromarray(getattr(skimage.data, name)()) for name in SAMPLE_PHOTOS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="HF ViT/DeiT or timm ViT: folder or Hub id (default: built here)")
    parser.add_argument("--images", type=Path, help="folder of images (default: scikit-image sample photos)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/demo"))
    args = parser.parse_args()
    start = time.perf_counter()
    args.output_dir.mkdir(parents=True, exist_ok=True)

    source = args.source or build_default_source(args.output_dir / "standard-source")
    images = sample_images(args.images)
    exact = BcosViTForImageClassification.from_pretrained_standard(source, b=1.0, bias="keep").eval()
    processor = exact.default_image_processor()
    pixel_values = processor(images=list(images.values()), return_tensors="pt")["pixel_values"]

    standard = ViTForImageClassification.from_pretrained(source).eval() if isinstance(source, Path) else None
    with torch.no_grad():
        bcos_logits = exact(pixel_values=pixel_values).logits
        if standard is not None:
            mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            diff = (standard(pixel_values=(pixel_values - mean) / std).logits - bcos_logits).abs().max().item()
            print(f"B-cosified at B=1 (biases kept) vs the source: max |logit difference| = {diff:.2e}")

    model = BcosViTForImageClassification.from_pretrained_standard(source, b=2.0, bias="remove").eval()
    print(f"{'image':<12}{'class':>7}{'logit':>10}{'sum contrib':>13}{'bias':>9}{'bias share':>12}")
    for name, x in tqdm(list(zip(images, pixel_values.split(1))), desc="explaining", leave=False):
        explanation = model.explain(x)
        explanation_panel(x, explanation, smooth=15).save(args.output_dir / f"{name}_explanation.png")
        tqdm.write(
            f"{name:<12}{explanation.target.item():>7}{explanation.target_logits.item():>10.3f}"
            f"{explanation.contributions.sum().item():>13.3f}{explanation.bias.item():>9.3f}"
            f"{explanation.bias_share.item():>12.1%}"
        )

    model_dir = args.output_dir / "bcos-vit"
    model.save_pretrained(model_dir)
    reloaded = AutoModelForImageClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        same = torch.allclose(reloaded(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits)
    print(f"saved {model_dir} (reloads with AutoModelForImageClassification: {'same logits' if same else 'MISMATCH'})")
    print(f"explanation panels in {args.output_dir}/ ; done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
