"""Make the figures of docs/synthetic.md.

    python docs/make_synth_figures.py            # writes docs/figures/synth_vs_real.png, od_space.png

synth_vs_real.png: synthetic HER2 0, 1+, 2+, 3+ patches beside skimage's
real IHC image (skimage.data.immunohistochemistry, DAB + haematoxylin).
od_space.png: the pixels of each image in haematoxylin / DAB optical
density space (skimage.color.rgb2hed), real and synthetic on the same axes.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = [("0", 31), ("1+", 47), ("2+", 47), ("3+", 45)]  # (score, seed)
MPP = 0.35  # close to the apparent resolution of skimage's image


def images() -> list[tuple[str, np.ndarray]]:
    """[(title, RGB uint8 512 x 512)]: the real image first, then the synthetic ones."""
    from skimage import data

    from her2kit.synth.images import make_patch

    out = [("real (skimage IHC)", data.immunohistochemistry())]
    for score, seed in CASES:
        p = make_patch(seed, 512, score, mpp=MPP)
        pct = 100 * p.counts / max(1, p.counts.sum())
        sub = f" {p.subcategory}" if p.subcategory else ""
        out.append((f"synthetic {p.score}{sub}\n" + " / ".join(f"{v:.0f}" for v in pct) + " % cat 0/1/2/3",
                    p.region.rgb))
    return out


def figure_side_by_side(ims: list[tuple[str, np.ndarray]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ims), figsize=(3.2 * len(ims), 3.6))
    for ax, (title, im) in zip(axes, ims, strict=True):
        ax.imshow(im)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"Real DAB + haematoxylin IHC (left) and synthetic HER2 IHC at {MPP} um/px", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def figure_od_space(ims: list[tuple[str, np.ndarray]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.color import rgb2hed

    fig, axes = plt.subplots(1, len(ims), figsize=(3.2 * len(ims), 3.4), sharex=True, sharey=True)
    real = rgb2hed(ims[0][1])
    for ax, (title, im) in zip(axes, ims, strict=True):
        hed = rgb2hed(im)
        ax.hist2d(real[..., 0].ravel(), real[..., 2].ravel(), bins=120, range=[[-0.02, 0.16], [-0.04, 0.20]],
                  cmap="Greys", norm=matplotlib.colors.LogNorm(), alpha=0.6 if im is not ims[0][1] else 1.0)
        if im is not ims[0][1]:
            ax.hist2d(hed[..., 0].ravel(), hed[..., 2].ravel(), bins=120, range=[[-0.02, 0.16], [-0.04, 0.20]],
                      cmap="Oranges", norm=matplotlib.colors.LogNorm(), alpha=0.75)
        ax.set_title(title.split("\n")[0], fontsize=9)
        ax.set_xlabel("haematoxylin OD (rgb2hed)")
    axes[0].set_ylabel("DAB OD (rgb2hed)")
    fig.suptitle("Pixels in H/DAB optical-density space: real (grey) and synthetic (orange)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def od_summary(ims: list[tuple[str, np.ndarray]]) -> list[dict]:
    """Per image: percentiles of H and DAB OD (rgb2hed units) over its pixels."""
    from skimage.color import rgb2hed

    rows = []
    for title, im in ims:
        hed = rgb2hed(im)
        rows.append({"image": title.split("\n")[0],
                     "H_p50": float(np.percentile(hed[..., 0], 50)), "H_p95": float(np.percentile(hed[..., 0], 95)),
                     "DAB_p50": float(np.percentile(hed[..., 2], 50)),
                     "DAB_p95": float(np.percentile(hed[..., 2], 95))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(HERE, "figures"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    ims = images()
    figure_side_by_side(ims, os.path.join(args.out, "synth_vs_real.png"))
    figure_od_space(ims, os.path.join(args.out, "od_space.png"))
    for r in od_summary(ims):
        print(f"{r['image']:<22} H p50 {r['H_p50']:.3f} p95 {r['H_p95']:.3f} | DAB p50 {r['DAB_p50']:.3f} p95 {r['DAB_p95']:.3f}")


if __name__ == "__main__":
    main()
