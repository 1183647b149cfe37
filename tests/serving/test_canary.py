"""Canary skew is gone: during a canary Knative splits the transformer's and the predictor's traffic independently,
so any transformer must answer, in front of any predictor, exactly what that predictor's bundle answers.

A transformer started for bundle A (its ``--model_dir`` is ignored: it needs no bundle) in front of a predictor on
bundle B (other data, seed and image size) answers what B answers in-process, for real products when the real-data
sample is there (synthetic test products otherwise). Before the hop carried raw text and canonical images, it carried
token ids from the transformer's vocabulary: the answer was then A's tokens read with B's vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton

from devtools.local_servers import ServerProcess, free_port
from rakuten_mm.image import canonical_images
from rakuten_mm.model import load_bundle

pytestmark = [pytest.mark.serving, pytest.mark.integration, pytest.mark.slow]

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "rakuten-real"
Product = tuple[str, str, bytes | None]


def _products(frame: pd.DataFrame, image_dir: Path, count: int) -> list[Product]:
    out: list[Product] = []
    for row in frame.itertuples():
        path = image_dir / f"image_{row.imageid}_product_{row.productid}.jpg"
        image = path.read_bytes() if path.is_file() and len(out) % 4 != 3 else None  # every 4th without image
        out.append((str(row.designation), str(row.description), image))
        if len(out) == count:
            break
    return out


@pytest.fixture(scope="module")
def products(synth_data: Path) -> list[Product]:
    if (REAL_DATA / "X.csv").is_file():
        frame = pd.read_csv(REAL_DATA / "X.csv", index_col=0, keep_default_na=False)
        return _products(frame, REAL_DATA / "images", 16)
    frame = pd.read_csv(synth_data / "X_test_update.csv", index_col=0, keep_default_na=False)
    return _products(frame, synth_data / "images" / "image_test", 16)


@pytest.fixture(scope="module")
def skewed_transformer(serving_bundle: Path, other_bundle: Path, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[ServerProcess]:
    """Predictor on bundle B; in front of it a transformer started as it would be for bundle A."""
    logs = tmp_path_factory.mktemp("canary")
    predictor = ServerProcess("predictor", free_port(), ["--model_dir", str(other_bundle)], logs / "p.log").start()
    transformer = ServerProcess("transformer", free_port(), ["--model_dir", str(serving_bundle), "--predictor_host",
                                                             predictor.address], logs / "t.log").start()
    try:
        predictor.wait_ready(180)
        transformer.wait_ready(60)
        yield transformer
    finally:
        transformer.stop()
        predictor.stop()


def _served(address: str, products: list[Product]) -> dict[str, np.ndarray]:
    def column(name: str, values: list[bytes]) -> triton.InferInput:
        inp = triton.InferInput(name, [len(values)], "BYTES")
        inp.set_data_from_numpy(np.array(values, dtype=object), binary_data=True)
        return inp

    client = triton.InferenceServerClient(address, network_timeout=120)
    try:
        result = client.infer("rakuten", [column("designation", [p[0].encode() for p in products]),
                                          column("description", [p[1].encode() for p in products]),
                                          column("image", [p[2] or b"" for p in products])])
    finally:
        client.close()
    return {name: result.as_numpy(name) for name in ("prdtypecode", "probabilities")}


def test_any_transformer_answers_what_the_predictors_bundle_answers(skewed_transformer: ServerProcess,
                                                                    serving_bundle: Path, other_bundle: Path,
                                                                    products: list[Product]) -> None:
    served = _served(skewed_transformer.address, products)
    images, mask = canonical_images([p[2] for p in products])
    designations, descriptions = [p[0] for p in products], [p[1] for p in products]
    bundle_b, bundle_a = load_bundle(other_bundle), load_bundle(serving_bundle)
    assert bundle_a.pre.image_preset.size != bundle_b.pre.image_preset.size
    assert bundle_a.pre.vocab.itos != bundle_b.pre.vocab.itos
    expected = bundle_b.predict_raw(designations, descriptions, images, mask)
    np.testing.assert_allclose(served["probabilities"], expected, rtol=1e-5, atol=1e-5)
    assert served["prdtypecode"].tolist() == [bundle_b.labels.codes[i] for i in expected.argmax(1)]
    # The test can tell the bundles apart: A's answers are not B's.
    other = bundle_a.predict_raw(designations, descriptions, images, mask)
    assert np.abs(other - expected).max() > 1e-3
