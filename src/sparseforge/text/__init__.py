"""Offline English text for language-model training and calibration. Nothing here downloads:
``sparseforge data fetch austen`` (:func:`sparseforge.fetch.fetch_austen`) fetches the novels once.

Two sources:

* ``"austen"`` -- Jane Austen's six completed novels (*Sense and Sensibility*, *Pride and
  Prejudice*, *Mansfield Park*, *Emma*, *Northanger Abbey*, *Persuasion*; Project Gutenberg
  texts, public domain), as packaged by Julia Silge's R package ``janeaustenr`` (MIT) and shipped
  by Debian as ``r-cran-janeaustenr``. About 4 M characters. The package stores the novels as R
  objects in a lazy-load database (``data/Rdata.rdx`` + ``data/Rdata.rdb``); this module reads
  that format, and plain ``.rda`` files, with its own small parser of R's XDR serialization, so
  neither R nor an extra Python package is needed.
* ``"text:PATH"`` -- any local UTF-8 text file, one document (handy for tests and for your own
  calibration text).

Splits: every document (each novel, or the one file) is cut into a head for training and a
*contiguous tail* of ``val_fraction`` of its characters for validation, so no validation text is
ever seen in training and every novel is represented in both. The heads are joined by a blank
line (``"\\n\\n"``) into one training stream, the tails likewise into one validation stream.

Tokenizers: ``"byte"`` (UTF-8 bytes, vocabulary 256, nothing is ever unknown) and ``"char"``
(the sorted set of characters of the *training* text, plus one unknown id at the end, so the
vocabulary cannot leak validation characters).

Example::

    from sparseforge.text import load_text_corpus, lm_batches
    corpus = load_text_corpus("austen", tokenizer="char")
    for x, y in lm_batches(corpus.train, block_size=128, batch_size=32, seed=0, steps=1000):
        ...  # x, y: [32, 128] int64, y is x shifted by one token
"""

from .austen import (AUSTEN_NOVELS, AUSTEN_PACKAGE, DATA_ENV_VAR, austen_available, default_austen_root, ensure_austen,
                     read_austen_novels)
from .batches import lm_batches, lm_eval_batches
from .corpus import TOKENIZERS, TextCorpus, load_text_corpus

__all__ = [
    "AUSTEN_NOVELS",
    "AUSTEN_PACKAGE",
    "DATA_ENV_VAR",
    "TOKENIZERS",
    "TextCorpus",
    "austen_available",
    "default_austen_root",
    "ensure_austen",
    "lm_batches",
    "lm_eval_batches",
    "load_text_corpus",
    "read_austen_novels",
]
