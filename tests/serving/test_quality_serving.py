"""The serving predictor on a bundle of the quality configuration (chartfidf reads the raw text the hop carries,
EfficientNet-Lite0 backbone): it answers exactly as the in-process model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from serving_helpers import hop_request, image_bytes

from rakuten_mm.image import canonical_images
from rakuten_mm.model import load_bundle
from serving.predictor import RakutenPredictor
from serving.settings import PredictorSettings


def test_the_predictor_answers_as_the_in_process_model(quality_bundle: Path) -> None:
    predictor = RakutenPredictor("rakuten", PredictorSettings(model_dir=str(quality_bundle), device="cpu"))
    assert predictor.load()
    designations = ["Peluche lapin 30 cm", "Roman policier poche", "Lampe de chevet"]
    descriptions = ["", "<p>un <b>thriller</b></p>", "LED"]
    images, mask = canonical_images([image_bytes(), None, image_bytes(fmt="PNG", color=(0, 0, 255))])

    async def go() -> dict[str, np.ndarray]:
        response, _ = await predictor(hop_request(designations, descriptions, images, mask), headers={})
        return {out.name: out.as_numpy() for out in response.outputs}

    out = asyncio.run(go())
    expected = load_bundle(quality_bundle).predict_raw(designations, descriptions, images, mask)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)

