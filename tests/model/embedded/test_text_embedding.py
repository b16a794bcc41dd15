"""Our MiniLM sentence embedder against sentence-transformers on the same packaged weights."""

from __future__ import annotations

import numpy as np
import pytest

from omni.model.embedded.text_embedding import TextEmbedder, packaged_model_dir

SENTENCES = [
    "my locker code is four seven one nine",
    "What is my locker code?",
    "The red mug is on the kitchen table next to the window.",
    "ok",
    "Die Katze schläft auf dem Sofa, während es draußen regnet.",
    " ".join(["a long sentence about many things"] * 60),  # over 256 tokens: truncated the same way
]


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder()


@pytest.mark.slow
def test_matches_sentence_transformers(embedder: TextEmbedder) -> None:
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is the test-only reference")
    ref = st.SentenceTransformer(str(packaged_model_dir()), device="cpu").encode(SENTENCES, batch_size=4)
    ours = embedder(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    # float32 BERT on the same weights: differences are summation order only (observed ~1e-7).
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_batching_does_not_change_embeddings(embedder: TextEmbedder) -> None:
    one_by_one = np.concatenate([embedder([s]) for s in SENTENCES])
    np.testing.assert_allclose(embedder(SENTENCES), one_by_one, atol=2e-5)  # padding is masked out


def test_related_sentences_are_closer(embedder: TextEmbedder) -> None:
    e = embedder(SENTENCES[:3])
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2
    with pytest.raises(TypeError, match="sequence of texts"):
        embedder("one string")  # type: ignore[arg-type]
