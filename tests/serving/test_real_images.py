"""Real Rakuten products (text + original 500×500 JPEGs from ../shared/data/rakuten-real) through the whole path:
client → transformer → predictor, compared with in-process batch prediction (``rakuten_mm.inference.predict_rows``:
image files → the canonical form → the same Classifier) on the same rows: they agree within 1e-5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton

from rakuten_mm.inference import predict_rows
from rakuten_mm.model import load_bundle

pytestmark = [pytest.mark.serving, pytest.mark.integration]


def test_real_products_through_the_servers(real_data: Path, transformer_url: str, serving_bundle: Path) -> None:
    frame = pd.read_csv(real_data / "X.csv", index_col=0, keep_default_na=False)
    paths = [real_data / "images" / f"image_{r.imageid}_product_{r.productid}.jpg" for r in frame.itertuples()]
    rows = [(r, p) for r, p in zip(frame.itertuples(), paths, strict=True) if p.is_file()][:12]
    if not rows:
        pytest.skip(f"no real images under {real_data / 'images'}")
    designations = [str(r.designation).encode() for r, _ in rows]
    descriptions = [str(r.description).encode() for r, _ in rows]
    images = [p.read_bytes() for _, p in rows]

    def column(name: str, values: list[bytes]) -> triton.InferInput:
        inp = triton.InferInput(name, [len(values)], "BYTES")
        inp.set_data_from_numpy(np.array(values, dtype=object), binary_data=True)
        return inp

    client = triton.InferenceServerClient(transformer_url.removeprefix("http://"), network_timeout=120)
    try:
        result = client.infer("rakuten", [column("designation", designations),
                                          column("description", descriptions), column("image", images)])
    finally:
        client.close()
    model = load_bundle(serving_bundle)
    table = pd.DataFrame({"designation": [str(r.designation) for r, _ in rows],
                          "description": [str(r.description) for r, _ in rows],
                          "image": [str(p.relative_to(real_data)) for _, p in rows]})
    expected, _, present = predict_rows(model, table, real_data)
    assert present["image"].all()
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-5)
    assert result.as_numpy("prdtypecode").tolist() == [model.labels.codes[i] for i in expected.argmax(1)]
