"""Known answers: pictures whose answers from the original model were published, embedded
through the runtime's own path (decode, preprocess, int8 graphs, tokenizer) and compared.

Pinned bytes prove a download, not that clipsearch's preprocessing, tokenizer and int8 graphs
reproduce CLIP. For OpenAI's ViT-B/32 two answers are published: Hugging Face's CLIP
integration test (COCO val2017 000000039769, two cats on a couch, against "a photo of a cat"
and "a photo of a dog": logits 24.5701 and 19.3049 at logit scale 100) and OpenAI's README
(its CLIP.png against "a diagram", "a dog", "a cat": probabilities 0.9927937, 0.00421068,
0.00299572). A catalogue entry carries them (`known_answers`); `models pull` refuses to
install a model that misses one and `check-model` repeats the check (the manifest keeps
them). The pictures ship in `known_answer_pictures/` beside this module, with their provenance.

An answer is either cosines (each within `tolerance` of the published one) or probabilities
at a logit scale, compared as what they determine: the cosine differences between the texts
(ln(p_i / p_j) / scale). Either way the published order of the texts must be kept.
"""
from __future__ import annotations

import math
from pathlib import Path

from clipsearch.errors import ModelError

PICTURES = Path(__file__).resolve().parent / "known_answer_pictures"
DEFAULT_TOLERANCE = 0.02  # cosine; int8 and the draft-free PNG decode move a cosine by < 0.01


class KnownAnswerError(ModelError):
    """The model does not give a published answer: the graphs or the preprocessing differ."""


def picture_path(answer: dict) -> Path:
    path = Path(answer["picture"])
    return path if path.is_absolute() else PICTURES / path


def measure(manifest, answers: list[dict], threads: int | None = None) -> list[dict]:
    """Each answer with the cosines this model gives (`got`) and its worst deviation."""
    import numpy as np

    from clipsearch.photos.preprocess import load_pixels

    from .encoders import ImageEncoder, TextEncoder

    if not answers:
        return []
    pixels = np.stack([load_pixels(picture_path(answer), manifest.image) for answer in answers])
    images = ImageEncoder(manifest, threads, verify=False).encode_pixels(pixels)
    texts = TextEncoder(manifest, threads)
    measured = []
    for answer, image in zip(answers, images):
        got = [float(c) for c in texts.encode(list(answer["texts"])) @ image]
        measured.append(dict(answer, got=[round(c, 5) for c in got], **_compare(answer, got)))
    return measured


def _compare(answer: dict, got: list[float]) -> dict:
    """The worst deviation from the published answer, and whether the order is kept."""
    texts = answer["texts"]
    if "cosines" in answer:
        published = [float(c) for c in answer["cosines"]]
        deviations = [abs(g - p) for g, p in zip(got, published)]
        worst = max(range(len(texts)), key=lambda i: deviations[i])
        what = f"{texts[worst]!r}: cosine {got[worst]:.4f}, published {published[worst]:.4f}"
    else:
        scale = float(answer.get("logit_scale", 100.0))
        probabilities = [float(p) for p in answer["probabilities"]]
        top = max(range(len(texts)), key=lambda i: probabilities[i])
        published = [math.log(probabilities[top] / p) / scale for p in probabilities]  # cosine gap to the top text
        gaps = [got[top] - g for g in got]
        deviations = [abs(g - p) for g, p in zip(gaps, published)]
        worst = max(range(len(texts)), key=lambda i: deviations[i])
        what = (f"{texts[top]!r} over {texts[worst]!r}: cosine gap {gaps[worst]:.4f}, published "
                f"{published[worst]:.4f} (from probabilities {probabilities[top]} and {probabilities[worst]})")
        published = [-gap for gap in published]  # ordered as cosines are
    order_kept = _order(got) == _order(published)
    return {"deviation": round(deviations[worst], 5), "order_kept": order_kept, "worst": what}


def _order(values: list[float]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: -values[i])


def check(manifest, answers: list[dict], threads: int | None = None, then: str = "") -> list[dict]:
    """`measure`, then raise KnownAnswerError naming the first answer missed and by how much
    (`then`: what it means for the user, at the end of the message)."""
    measured = measure(manifest, answers, threads)
    for answer in measured:
        tolerance = float(answer.get("tolerance", DEFAULT_TOLERANCE))
        if answer["deviation"] > tolerance or not answer["order_kept"]:
            why = (f"off by {answer['deviation']:.4f} (tolerance {tolerance})" if answer["deviation"] > tolerance
                   else "the texts come out in another order than published")
            raise KnownAnswerError(
                f"{manifest.name}: known answer missed on {answer['picture']} ({answer.get('published_by', 'published')}): "
                f"{answer['worst']}, {why}; the graphs or the preprocessing do not reproduce the original model"
                + (f"; {then}" if then else ""))
    return measured
