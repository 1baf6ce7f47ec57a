#!/usr/bin/python3
"""export_text.py - writes a fitted scikit-learn text classifier/regressor as a Modelgate `text`
file: a bag-of-words vectorizer followed by a linear model.

The file is the JSON document described in backends/runtime/tools/README.md ("text"):

    {"format": "mg-text", "version": 1,
     "type": "logistic" | "multinomial" | "regression",
     "lowercase": true, "token_pattern": "word", "ngram_range": [1, 2],
     "binary": false, "sublinear_tf": false,
     "vocabulary": {"token": column, ...},        # V tokens, columns 0..V-1, each once
     "idf": [V numbers],                          # only when the vectorizer used idf
     "norm": "l2" | "l1" | null,
     "coef": [[V numbers], ...K rows], "intercept": [K numbers],
     "classes": [labels]}                         # classifiers only

Supported: a Pipeline (or a vectorizer and an estimator given separately) of
    CountVectorizer or TfidfVectorizer (analyzer="word", the default token_pattern,
        ngram_range within (1, 2), lowercase or not, binary, no strip_accents, no custom
        tokenizer/preprocessor), optionally followed by a TfidfTransformer,
    then LogisticRegression (binary, one-vs-rest, multinomial) or any linear regressor that
        predicts X @ coef_.T + intercept_ (LinearRegression, Ridge, ...): the coefficients are
        written by export_linear.to_document.

The runtime's tokenizer (tokenize() below, the same in kind_text.c): runs of 2 or more
characters from [A-Za-z0-9_] or any byte >= 0x80 (any non-ASCII UTF-8 character), with ASCII
lowercasing. It equals scikit-learn's (?u)\\b\\w\\w+\\b on ASCII text and on non-ASCII letters that
are already lower case; it differs on non-ASCII upper case (sklearn lowercases "É" to "é", the
runtime does not) and on non-ASCII punctuation ("don\u2019t" is one token for the runtime, "don"
for sklearn). Pass texts=[...] (e.g. the training corpus) to export_text to have every text
checked; a difference raises ValueError naming the text.

Use as a module:
    from export_text import export_text
    export_text(pipeline, "model.json", texts=train_texts)
or from the command line with a pickled Pipeline (only unpickle files you trust):
    python3 export_text.py model.pkl model.json
"""
import base64
import json
import math
import re
import sys
import warnings

import numpy as np

from export_linear import to_document as linear_document

FORMAT = "mg-text"
VERSION = 1
SKLEARN_TOKEN_PATTERN = r"(?u)\b\w\w+\b"

# A word character: ASCII letter, digit or '_', or any non-ASCII character (code point >= 0x80).
_WORD = re.compile("[A-Za-z0-9_\u0080-\U0010ffff]{2,}")
_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def tokenize(text, lowercase=True):
    """The runtime's tokenizer: |text| (str, or UTF-8 bytes) -> list of str tokens: runs of 2
    or more word characters (counted in characters, not bytes), lowercased in ASCII only."""
    s = text if isinstance(text, str) else bytes(text).decode("utf-8")
    if lowercase:
        s = s.translate(_ASCII_LOWER)
    return _WORD.findall(s)


def _parts(model, estimator):
    """(vectorizer, tfidf_transformer or None, estimator) from a Pipeline or a pair."""
    from sklearn.feature_extraction.text import (CountVectorizer, HashingVectorizer,
                                                 TfidfTransformer, TfidfVectorizer)
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        if estimator is not None:
            raise TypeError("give a Pipeline, or a vectorizer and an estimator, not both")
        steps = [s for _, s in model.steps if s not in (None, "passthrough")]
    else:
        steps = [model, estimator] if estimator is not None else [model]
    if len(steps) not in (2, 3):
        raise TypeError("expected vectorizer [-> TfidfTransformer] -> estimator, got %d steps: %s"
                        % (len(steps), ", ".join(type(s).__name__ for s in steps)))
    vec, est = steps[0], steps[-1]
    tfidf = steps[1] if len(steps) == 3 else None
    if isinstance(vec, HashingVectorizer) or not isinstance(vec, CountVectorizer):
        raise TypeError("first step: expected a CountVectorizer or TfidfVectorizer, got %s"
                        % type(vec).__name__)
    if tfidf is not None and not isinstance(tfidf, TfidfTransformer):
        raise TypeError("middle step: expected a TfidfTransformer, got %s" % type(tfidf).__name__)
    if tfidf is not None and isinstance(vec, TfidfVectorizer):
        raise TypeError("a TfidfVectorizer followed by a TfidfTransformer is not supported")
    return vec, tfidf, est


def _check_vectorizer(vec):
    """Refuses vectorizer settings the runtime does not reproduce."""
    def refuse(what):
        raise ValueError("%s: %s; the runtime's text kind cannot reproduce it"
                         % (type(vec).__name__, what))

    if vec.analyzer != "word":
        refuse("analyzer=%r (only 'word')" % (vec.analyzer,))
    if vec.tokenizer is not None or vec.preprocessor is not None:
        refuse("a custom tokenizer/preprocessor")
    if vec.token_pattern != SKLEARN_TOKEN_PATTERN:
        refuse("token_pattern=%r (only the default %r)" % (vec.token_pattern,
                                                           SKLEARN_TOKEN_PATTERN))
    if vec.strip_accents is not None:
        refuse("strip_accents=%r" % (vec.strip_accents,))
    if vec.input != "content":
        refuse("input=%r (only 'content')" % (vec.input,))
    lo, hi = vec.ngram_range
    if not 1 <= lo <= hi <= 2:
        refuse("ngram_range=%r (supported: (1, 1), (1, 2), (2, 2))" % (vec.ngram_range,))
    if hi > 1 and vec.stop_words is not None:
        refuse("stop_words with n-grams (stop words are removed before pairs are formed)")
    if vec.encoding.lower().replace("-", "") != "utf8":
        refuse("encoding=%r (the runtime reads UTF-8)" % (vec.encoding,))
    if not hasattr(vec, "vocabulary_"):
        raise ValueError("%s is not fitted (no vocabulary_)" % type(vec).__name__)
    if np.dtype(vec.dtype) == np.float32:
        warnings.warn("vectorizer dtype float32: scikit-learn computes features in float32, the "
                      "runtime in float64; answers differ by ~1e-7")


def to_document(model, estimator=None, description=None):
    """Returns the mg-text document (a dict) for a fitted Pipeline, or a vectorizer and an
    estimator."""
    vec, tfidf, est = _parts(model, estimator)
    _check_vectorizer(vec)
    lin = linear_document(est)
    vocab = {str(t): int(c) for t, c in vec.vocabulary_.items()}
    v = len(vocab)
    if sorted(vocab.values()) != list(range(v)):
        raise ValueError("vocabulary_: columns must be 0..%d, each once" % (v - 1))
    if lin["n_features"] != v:
        raise ValueError("%s has %d coefficients per row for a vocabulary of %d tokens"
                         % (type(est).__name__, lin["n_features"], v))
    doc = {"format": FORMAT, "version": VERSION, "type": lin["type"],
           "lowercase": bool(vec.lowercase), "token_pattern": "word",
           "ngram_range": [int(vec.ngram_range[0]), int(vec.ngram_range[1])],
           "binary": bool(vec.binary)}
    # tf-idf: a TfidfVectorizer (same attributes as a TfidfTransformer) or a TfidfTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer

    tf = tfidf if tfidf is not None else vec if isinstance(vec, TfidfVectorizer) else None
    if tf is not None:
        doc["sublinear_tf"] = bool(tf.sublinear_tf)
        if tf.use_idf:
            idf = np.asarray(tf.idf_, dtype=np.float64)
            if idf.shape != (v,) or not np.all(np.isfinite(idf)):
                raise ValueError("idf_: expected %d finite numbers" % v)
            doc["idf"] = [float(x) for x in idf]
        if tf.norm not in (None, "l1", "l2"):
            raise ValueError("norm=%r (supported: 'l2', 'l1', None)" % (tf.norm,))
        doc["norm"] = tf.norm
    else:
        doc["sublinear_tf"] = False
        doc["norm"] = None
    # tokens in column order: the file reads like the coefficient rows
    doc["vocabulary"] = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    doc["coef"] = lin["coef"]
    doc["intercept"] = lin["intercept"]
    if "classes" in lin:
        doc["classes"] = lin["classes"]
    if description:
        doc["description"] = str(description)
    return doc


def check_tokenizer(model, texts, estimator=None):
    """Raises ValueError when the runtime would tokenize one of |texts| differently from the
    fitted vectorizer (see tokenize())."""
    vec = _parts(model, estimator)[0]
    pre, tok = vec.build_preprocessor(), vec.build_tokenizer()
    for t in texts:
        want = tok(pre(t))
        got = tokenize(t, vec.lowercase)
        if got != want:
            raise ValueError("the runtime tokenizes %r as %r, scikit-learn as %r (non-ASCII upper "
                             "case or punctuation?)" % (t, got, want))


def export_text(model, path, estimator=None, description=None, texts=None):
    """Writes |model| (a Pipeline, or a vectorizer with |estimator|) to |path| as an mg-text JSON
    file and returns the document. |texts|: optional sample texts whose tokenization is checked
    against scikit-learn's (check_tokenizer)."""
    doc = to_document(model, estimator, description)
    if texts is not None:
        check_tokenizer(model, texts, estimator)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    return doc


# ---------------------------------------------------------------------------------------------
# Reference: what the runtime computes for a document (the tests compare it with scikit-learn)

def features(doc, item):
    """The sparse feature row {column: value} of one input item, as kind_text.c computes it.
    |item|: a str (text), bytes (UTF-8 text), a list of str (tokens, used as they are), or the
    JSON forms {"b64": "..."}."""
    if isinstance(item, dict):
        item = base64.b64decode(item["b64"])
    if isinstance(item, list):
        toks = list(item)
    else:
        toks = tokenize(item, doc.get("lowercase", True))
    lo, hi = doc.get("ngram_range", [1, 1])
    grams = []
    if lo <= 1:
        grams += toks
    if hi >= 2:
        grams += [toks[i] + " " + toks[i + 1] for i in range(len(toks) - 1)]
    vocab = doc["vocabulary"]
    tf = {}
    for g in grams:
        c = vocab.get(g)
        if c is not None:
            tf[c] = tf.get(c, 0.0) + 1.0
    if doc.get("binary"):
        tf = {c: 1.0 for c in tf}
    if doc.get("sublinear_tf"):
        tf = {c: 1.0 + math.log(x) for c, x in tf.items()}
    if doc.get("idf") is not None:
        tf = {c: x * doc["idf"][c] for c, x in tf.items()}
    norm = doc.get("norm")
    if norm is not None and tf:
        n = math.sqrt(sum(x * x for x in tf.values())) if norm == "l2" else \
            sum(abs(x) for x in tf.values())
        if n > 0:
            tf = {c: x / n for c, x in tf.items()}
    return tf


def reference_predict(doc, item):
    """(output, score, values or None) of one item: the runtime's answer."""
    x = features(doc, item)
    coef, b = doc["coef"], doc["intercept"]
    z = np.array([b[k] + sum(v * coef[k][c] for c, v in x.items()) for k in range(len(b))])
    t = doc["type"]
    if t == "regression":
        if len(z) == 1:
            return float(z[0]), float(z[0]), None
        return [float(v) for v in z], float(z[0]), None
    if t == "multinomial":
        e = np.exp(z - z.max())
        p = e / e.sum()
    elif len(z) == 1:
        p1 = 1.0 / (1.0 + math.exp(-z[0]))
        p = np.array([1.0 - p1, p1])
    else:
        p = 1.0 / (1.0 + np.exp(-z))
        p = p / p.sum()
    i = int(p.argmax())
    return doc["classes"][i], float(p[i]), [float(v) for v in p]


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: export_text.py PIPELINE.pkl OUT.json\n")
        return 2
    import pickle

    with open(argv[1], "rb") as f:
        model = pickle.load(f)
    doc = export_text(model, argv[2])
    print("%s: %s, %d tokens, ngram_range %s, %d rows" %
          (argv[2], doc["type"], len(doc["vocabulary"]), doc["ngram_range"], len(doc["coef"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
