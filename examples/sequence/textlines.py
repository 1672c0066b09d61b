"""Text-line images for the PP-OCRv4 recognizer shipped in the rapidocr_onnxruntime wheel (1.4.4:
``rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx``, a CTC head [N, 40, 6625]), no download: words
rendered with Pillow's default font, preprocessed as rapidocr does (height 48, width <= 320,
(x / 255 - 0.5) / 0.5, zero padding), labels from the model's own character list (metadata ``character``;
id = position + 1, the blank is 0), padded with -1. Usage::

    python examples/sequence/textlines.py ch_PP-OCRv4_rec_infer.onnx lines.npz 16
    onnxfi analyze ch_PP-OCRv4_rec_infer.onnx --data lines.npz --faults 100

(the labels [N, L] make onnxfi read the output as a CTC sequence; without labels give --task ctc)."""

from __future__ import annotations

import sys

import numpy as np
import onnx
from PIL import Image, ImageDraw, ImageFont

model, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
chars = onnx.load(model, load_external_data=False)
chars = [p.value for p in chars.metadata_props if p.key == "character"][0].split("\n")
index = {c: i + 1 for i, c in enumerate(chars)}
rng = np.random.default_rng(0)
words = ["HELLO", "WORLD", "ONNX", "fault", "radiation", "2026", "bit flip", "safety", "model", "runtime",
         "Speed 42", "error", "TOKEN", "camera", "LIDAR", "drive", "stop", "yield", "exit 12", "gate"]
font = ImageFont.load_default(size=36)
xs, labels = [], []
for i in range(n):
    text = words[i % len(words)] if i < len(words) else " ".join(rng.choice(words, 2))
    w = int(font.getlength(text)) + 16
    img = Image.new("L", (w, 48), 255)
    ImageDraw.Draw(img).text((8, 4), text, fill=0, font=font)
    img = img.convert("RGB")
    nw = min(320, int(round(48 * w / 48)))
    img = img.resize((nw, 48), Image.BILINEAR)
    a = (np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    x = np.zeros((3, 48, 320), np.float32)
    x[:, :, :nw] = a
    xs.append(x)
    ids = [index[c] for c in text if c in index]
    labels.append(ids)
L = max(map(len, labels))
lab = np.full((n, L), -1, np.int64)
for i, ids in enumerate(labels):
    lab[i, :len(ids)] = ids
np.savez(out, x=np.stack(xs), labels=lab)
print(out, np.stack(xs).shape, lab.shape)
