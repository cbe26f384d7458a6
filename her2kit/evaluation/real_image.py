"""The shipped model on a real IHC image: scikit-image's ``data.immunohistochemistry()``.

That image (512 x 512, a colon tissue section stained with DAB and
haematoxylin; it is not HER2 breast tissue and its resolution is not
recorded) is the only real DAB image at hand. This module

- estimates its resolution by matching its nucleus size to the synthetic
  training data's (both measured on a haematoxylin Otsu threshold);
- segments it with a model, resampled to the model's microns per pixel;
- compares the model's nuclei with a plain haematoxylin threshold
  (``rgb2hed``, Otsu, small objects removed): Dice between the two;
- compares the images' stain statistics in optical-density (OD) space;
- draws image | membrane/nucleus overlay | nucleus agreement.

Run: ``python -m her2kit.evaluation.real_image docs/figures/real_ihc_segmentation.png
[--model NAME|PATH] [--synth DIR]``; the numbers go to the .json beside the PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

# Nuclei of invasive breast carcinoma cells are roughly 8-12 um across; the
# synthetic generator draws tumour nuclei in the same range.


def haematoxylin_nuclei(rgb: np.ndarray, min_area_px: int = 20) -> np.ndarray:
    """Boolean nucleus mask from the haematoxylin OD channel: Otsu threshold, small objects removed."""
    from scipy import ndimage
    from skimage.color import rgb2hed
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_objects

    h = gaussian(rgb2hed(rgb)[..., 0], sigma=1)
    mask = h > threshold_otsu(h)
    mask = remove_small_objects(mask, max_size=min_area_px)
    return ndimage.binary_fill_holes(mask)


def median_diameter_px(mask: np.ndarray) -> float:
    """Median equivalent-circle diameter (pixels) of the connected components of ``mask``."""
    from skimage.measure import label, regionprops

    d = [r.equivalent_diameter_area for r in regionprops(label(mask))]
    return float(np.median(d)) if d else float("nan")


def stain_stats(rgb: np.ndarray) -> dict[str, float]:
    """Percentiles (50th, 95th) of the haematoxylin and DAB concentrations (OD units, scikit-image rgb2hed)."""
    from skimage.color import rgb2hed

    hed = rgb2hed(rgb)
    return {
        "H_p50": float(np.percentile(hed[..., 0], 50)), "H_p95": float(np.percentile(hed[..., 0], 95)),
        "DAB_p50": float(np.percentile(hed[..., 2], 50)), "DAB_p95": float(np.percentile(hed[..., 2], 95)),
    }


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|A n B| / (|A| + |B|) of two boolean masks."""
    total = int(a.sum()) + int(b.sum())
    return 2 * int((a & b).sum()) / total if total else float("nan")


def analyse(model: str | None = None, synth: str | None = None, device: str | None = None) -> dict:
    """Segment the real image and measure it; returns numbers and arrays for the figure."""
    from skimage import data
    from skimage.transform import resize

    from her2kit.inference import load_segmenter
    from her2kit.training.dataset import load_folder

    rgb = data.immunohistochemistry()
    seg = load_segmenter(model, device=device)
    thresh = haematoxylin_nuclei(rgb)
    real_d = median_diameter_px(thresh)
    result: dict = {"image": "skimage.data.immunohistochemistry()", "shape": list(rgb.shape),
                    "model": seg.name, "model_mpp": seg.mpp, "real_nucleus_diameter_px": real_d,
                    "real_stains": stain_stats(rgb)}
    mpp = seg.mpp * 1.0
    if synth:
        images = load_folder(synth)[:8]
        synth_d = float(np.median([median_diameter_px(im.mask == 2) for im in images]))
        synth_mpp = images[0].mpp or seg.mpp
        # same physical nucleus size: real mpp = synthetic nucleus size (um) / real size (px)
        mpp = synth_d * synth_mpp / real_d
        result.update({"synth_nucleus_diameter_px": synth_d, "synth_mpp": synth_mpp,
                       "synth_stains": stain_stats(np.concatenate([im.rgb for im in images], 0))})
    result["assumed_mpp"] = mpp
    factor = mpp / seg.mpp
    work = rgb
    if abs(factor - 1) > 0.02:
        from skimage.transform import rescale

        work = np.clip(np.rint(rescale(rgb, factor, channel_axis=2, order=1, anti_aliasing=factor < 1,
                                       preserve_range=True)), 0, 255).astype(np.uint8)
    probs = seg.predict(work)
    if probs.shape[1:] != rgb.shape[:2]:
        probs = resize(probs, (3, *rgb.shape[:2]), order=1, anti_aliasing=False)
    labels = probs.argmax(0)
    model_nuclei = labels == 2
    result.update({
        "resample_factor": factor,
        "fraction": {"membrane": float((labels == 1).mean()), "nucleus": float(model_nuclei.mean()),
                     "haematoxylin_threshold_nucleus": float(thresh.mean())},
        "nucleus_dice_vs_haematoxylin_threshold": dice(model_nuclei, thresh),
        "model_nucleus_diameter_px": median_diameter_px(model_nuclei),
    })
    return {"numbers": result, "rgb": rgb, "labels": labels, "threshold": thresh}


def draw(res: dict, path: Path) -> None:
    """image | overlay (membrane orange, nucleus outline cyan) | nuclei: model vs threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    rgb, labels, thresh = res["rgb"], res["labels"], res["threshold"]
    over = rgb.astype(np.float64) / 255
    mem = labels == 1
    over[mem] = 0.35 * over[mem] + 0.65 * np.array([1.0, 0.55, 0.0])
    over[find_boundaries(labels == 2, mode="inner")] = (0.0, 1.0, 1.0)
    agree = np.ones_like(over)
    model_n = labels == 2
    agree[model_n & thresh] = (0.2, 0.2, 0.2)
    agree[model_n & ~thresh] = (0.9, 0.1, 0.1)
    agree[~model_n & thresh] = (0.1, 0.4, 0.9)
    n = res["numbers"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.3))
    for ax, img, title in zip(axes, (rgb, over, agree), (
            "skimage.data.immunohistochemistry()",
            f"{n['model']}: membrane (orange), nuclei (cyan outline)",
            f"nuclei vs haematoxylin Otsu threshold: Dice {n['nucleus_dice_vs_haematoxylin_threshold']:.2f}\n"
            "both (grey), model only (red), threshold only (blue)"), strict=True):
        ax.imshow(img)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="PNG to write; numbers go to the .json beside it")
    p.add_argument("--model", default=None)
    p.add_argument("--synth", default=None, help="synthetic folder to match nucleus size against")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    res = analyse(args.model, args.synth, args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw(res, out)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res["numbers"], indent=2) + "\n")
    os.replace(tmp, out.with_suffix(".json"))
    print(json.dumps(res["numbers"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
