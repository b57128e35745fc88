"""Reference settings of published models: what the official scripts of the IMAP paper use.

These are facts about specific checkpoints, kept in one place: the layers the official scripts
average maps over (chosen there by a lambda2 threshold), the number of motion heads IMAP keeps
per layer, and the paper's lambda2 threshold per family. A calibration of your own
(:func:`vidinterp.analyses.lambda2.calibrate_layers`) replaces the layer lists for your model.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelCard", "MODEL_CARDS", "LAMBDA2_THRESHOLDS", "model_card", "lambda2_threshold"]


@dataclass(frozen=True)
class ModelCard:
    """Reference settings of one checkpoint.

    Attributes:
        model_id: the checkpoint's id (``config._name_or_path`` of its transformer).
        family: adapter family.
        layers: blocks the official scripts average maps over.
        imap_k: motion heads IMAP keeps per (layer, step) in the official scripts.
    """

    model_id: str
    family: str
    layers: tuple[int, ...]
    imap_k: int = 5


MODEL_CARDS: dict[str, ModelCard] = {
    card.model_id: card
    for card in (
        ModelCard("THUDM/CogVideoX-2b", "cogvideox", (4, 6, 7, *range(10, 24))),
        ModelCard("THUDM/CogVideoX-5b", "cogvideox", (*range(1, 6), *range(7, 22), 23)),
        ModelCard("hunyuanvideo-community/HunyuanVideo", "hunyuan_video", (1, 2, 4, 5, 6, 9, 10, 13, *range(15, 20))),
        ModelCard("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "wan", tuple(range(5, 20)), imap_k=3),
        ModelCard("Wan-AI/Wan2.1-T2V-14B-Diffusers", "wan", tuple(range(5, 26))),
    )
}

#: The IMAP paper's lambda2 layer-selection thresholds, by family (0.7 where none is given).
LAMBDA2_THRESHOLDS: dict[str, float] = {"cogvideox": 0.7, "hunyuan_video": 0.75}
DEFAULT_LAMBDA2_THRESHOLD = 0.7


def model_card(model: str) -> ModelCard | None:
    """The reference card of checkpoint ``model`` (its id), or ``None`` for other models."""
    return MODEL_CARDS.get(model)


def lambda2_threshold(model: str) -> float:
    """The paper's lambda2 threshold for the family whose name ``model`` contains (e.g.
    ``"THUDM/CogVideoX-5b"`` -> 0.7), else 0.7."""
    squashed = model.lower().replace("_", "").replace("-", "")
    for family, threshold in LAMBDA2_THRESHOLDS.items():
        if family.replace("_", "") in squashed:
            return threshold
    return DEFAULT_LAMBDA2_THRESHOLD
