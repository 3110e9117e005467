"""Matplotlib figures: GAAD boxes over a frame."""
from __future__ import annotations

import numpy as np


def draw_boxes(boxes, image_h: int, image_w: int, out_path, video=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if video:
        from .data import decode_video, list_videos

        frame = np.load(decode_video(list_videos(video, "--video")[0], image_h, image_w, "--video"), mmap_mode="r")[0]
    else:
        from .data import shapes_frames

        frame = next(shapes_frames(1, image_h, image_w))
    fig, ax = plt.subplots(figsize=(5, 5 * image_h / image_w))
    ax.imshow(frame, extent=(0, image_w, image_h, 0))
    colors = plt.cm.viridis(np.linspace(0, 1, len(boxes)))
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2, ec=colors[i]))
        ax.text(x1 + 0.5, y1 + 2, str(i), color=colors[i], fontsize=7)
    ax.set_xlim(0, image_w)
    ax.set_ylim(image_h, 0)
    ax.set_title(f"GAAD boxes ({len(boxes)})")
    fig.savefig(out_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
