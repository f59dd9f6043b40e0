"""PNG outputs: pseudo-image grids and training curves."""

from __future__ import annotations

import pathlib

import numpy as np

from zskt_tf import runs


def to_display(images: np.ndarray, mean, std) -> np.ndarray:
    """Normalised images -> [0, 1] RGB/gray for display (undo the normalisation)."""
    images = np.asarray(images, np.float32) * np.asarray(std) + np.asarray(mean)
    return np.clip(images, 0.0, 1.0)


def image_grid(images: np.ndarray, columns: int = 8, padding: int = 2) -> np.ndarray:
    """(N, H, W, C) in [0, 1] -> one (rows*(H+p)+p, cols*(W+p)+p, 3) uint8 mosaic."""
    count, height, width, channels = images.shape
    if channels == 1:
        images = np.repeat(images, 3, axis=-1)
    rows = -(-count // columns)
    grid = np.ones(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, 3)
    )
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = (
            padding + row * (height + padding),
            padding + column * (width + padding),
        )
        grid[top : top + height, left : left + width] = image
    return (grid * 255).round().astype(np.uint8)


def save_image_grid(
    images: np.ndarray, path: str | pathlib.Path, columns: int = 8, scale: int = 3
) -> None:
    """Writes a PNG mosaic of [0, 1] images, each upscaled `scale` times."""
    from PIL import Image

    grid = image_grid(images, columns)
    picture = Image.fromarray(grid).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST
    )
    with runs.atomic_path(path) as temporary:
        picture.save(temporary, format="PNG")


def save_curves(
    history: list[dict],
    path: str | pathlib.Path,
    title: str,
    teacher_accuracy: float | None = None,
    metric: str = "test_accuracy",
) -> None:
    """Test accuracy (or another metric of the history, in 0-1) and the game's
    disagreement, when logged, against iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if any("generator_kl" in h for h in history) else 1
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    steps = [h["iteration"] for h in history]
    accuracy_axis = axes[0][0]
    accuracy_axis.plot(
        steps,
        [100 * h[metric] for h in history],
        "o-",
        label="student",
        markersize=3,
    )
    if teacher_accuracy is not None:
        accuracy_axis.axhline(
            100 * teacher_accuracy,
            color="gray",
            linestyle="--",
            label=f"teacher {100 * teacher_accuracy:.1f}%",
        )
    label = metric.replace("_", " ") + " (%)"
    accuracy_axis.set(xlabel="iteration", ylabel=label, title=title)
    accuracy_axis.grid(alpha=0.3)
    accuracy_axis.legend()
    if panels == 2:
        loss_axis = axes[0][1]
        logged = [h for h in history if "generator_kl" in h]
        loss_axis.plot(
            [h["iteration"] for h in logged],
            [h["generator_kl"] for h in logged],
            "o-",
            markersize=3,
        )
        loss_axis.axhline(0.0, color="gray", linewidth=0.8)
        loss_axis.set(
            xlabel="iteration",
            ylabel="KL(teacher || student), generator's batches",
            title="adversarial game (near 0 = collapsed)",
        )
        loss_axis.grid(alpha=0.3)
    figure.tight_layout()
    save_figure(figure, path)


def save_figure(figure, path: str | pathlib.Path) -> None:
    """Writes a matplotlib figure as PNG atomically, then closes it."""
    import matplotlib.pyplot as plt

    with runs.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
