"""Reflective correction's similarity: answer texts, content-word F1, the lexical and embedding similarities."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from clinkd.boxes import answer_text
from clinkd.config import ConfigError
from clinkd.reflect.similarity import (
    EmbeddingSimilarity,
    SimilarityError,
    build_similarity,
    content_f1,
)

from conftest import VG_ANSWER  # the ground truth of one VG answer

# ---- similarity -----------------------------------------------------------------------------------


def test_answer_text_drops_boxes_and_ref_tags_but_keeps_the_phrase():
    assert answer_text(VG_ANSWER) == "liver"
    assert (
        answer_text("<|object_ref_start|>left kidney<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|><|im_end|>")
        == "left kidney"
    )
    assert answer_text("A cyst <box>(1,2),(3,4)</box> here.") == "A cyst here."


def test_content_f1_exact_values():
    assert content_f1("right kidney", "right kidney") == 1.0
    assert content_f1("left kidney", "right kidney") == 0.5  # P = R = 1/2
    # output {small, cyst}, reference {small, dark, cyst}: P = 1, R = 2/3, F1 = 0.8
    assert content_f1("a small cyst", "a small dark cyst") == pytest.approx(0.8)
    assert content_f1("spleen", "liver") == 0.0
    assert content_f1("", "liver") == 0.0 and content_f1("the", "a") == 1.0  # both empty after neutral words
    assert content_f1("no abnormal finding", "abnormal finding") == pytest.approx(0.8)  # negation is content


def test_lexical_similarity_is_symmetric_bounded_and_order_insensitive():
    rng = np.random.default_rng(0)
    words = "small large dark bright cyst tumor liver kidney left right upper lower region the a in of".split()
    for _ in range(200):
        a = " ".join(rng.choice(words, rng.integers(0, 8)))
        b = " ".join(rng.choice(words, rng.integers(0, 8)))
        score = content_f1(a, b)
        assert 0.0 <= score <= 1.0
        assert score == content_f1(b, a)
        assert content_f1(" ".join(reversed(a.split())), b) == score


class FakeEncoder:
    """Test double for a SentenceTransformer: fixed vectors per text, records what it was asked to encode."""

    VECTORS = {"liver": [1.0, 0.0], "spleen": [0.0, 2.0], "hepatic lobe": [3.0, 3.0], "": [0.0, 0.0]}

    def __init__(self):
        self.seen = []

    def encode(self, sentences, **kwargs):
        self.seen.append(list(sentences))
        return np.array([self.VECTORS[s] for s in sentences])


def test_embedding_similarity_is_the_cosine_of_the_answer_texts():
    encoder = FakeEncoder()
    scores = EmbeddingSimilarity(encoder).scores(
        [VG_ANSWER, "spleen", "hepatic lobe", ""], ["liver", "liver", "liver", "liver"]
    )
    assert scores == pytest.approx([1.0, 0.0, 2**-0.5, 0.0])
    assert encoder.seen == [
        ["liver", "spleen", "hepatic lobe", "", "liver", "liver", "liver", "liver"]
    ]  # one batch, markup removed


def test_embedding_similarity_errors_name_the_key(tmp_path, monkeypatch):
    with pytest.raises(SimilarityError, match="reflect.similarity.path"):
        build_similarity("embedding", None)
    with pytest.raises(SimilarityError, match="reflect.similarity.path"):
        build_similarity("embedding", tmp_path / "missing")
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if the optional package were absent
    with pytest.raises(SimilarityError, match=r"pip install 'clinkd\[embedding\]'"):
        build_similarity("embedding", tmp_path)
    assert isinstance(SimilarityError("x"), ConfigError)  # so the CLI prints one red line


@pytest.mark.slow
def test_embedding_similarity_loads_a_real_local_sentence_transformers_checkpoint(tmp_path):
    pytest.importorskip("sentence_transformers")
    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = "[PAD] [UNK] [CLS] [SEP] liver kidney small dark cyst lower right left region".split()
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=len(words),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
        )
    )
    bert.save_pretrained(tmp_path / "hf")
    fast.save_pretrained(tmp_path / "hf")
    SentenceTransformer(str(tmp_path / "hf"), device="cpu", local_files_only=True).save(str(tmp_path / "st"))

    similarity = build_similarity("embedding", tmp_path / "st")
    scores = similarity.scores(
        ["small dark cyst", VG_ANSWER, "left kidney"], ["small dark cyst", "liver", "right kidney"]
    )
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(1.0)
    assert -1.0 <= scores[2] < 1.0
