#!/usr/bin/python3
"""train_text.py - trains the `text` kind's test models on a tiny built-in corpus.

    /usr/bin/python3 train_text.py OUT_DIR

writes into OUT_DIR (created if needed), in about a second:

    text_sentiment.json     TfidfVectorizer(ngram_range=(1, 2), sublinear_tf) + LogisticRegression:
                            "negative" / "positive" (binary, one coefficient row)
    text_intent.json        TfidfVectorizer(use_idf=False) + LogisticRegression: 3 intents
                            (multinomial), no idf in the file
    text_intent_ovr.json    CountVectorizer -> TfidfTransformer(norm="l1") +
                            LogisticRegression(multi_class="ovr"): the same 3 intents
    text_rating.json        CountVectorizer(binary=True) + LinearRegression: a 1..5 star rating
    expected_text.json      the inputs the unit tests send and what scikit-learn answers

The inputs are the JSON forms a client sends: a string (a text), a list of strings (tokens, used
as they are) and {"b64": "..."} (UTF-8 text as base64 bytes). scikit-learn only takes texts, so a
token list is compared with the text of its tokens joined by spaces (the tokens are chosen so
that the two are the same features), and bytes with their decoded text. Before writing,
expected_text.json's answers (Pipeline.predict_proba / predict) are checked against the
document's own formula (export_text.reference_predict) to 1e-12 and every corpus text's
tokenization against the runtime's (export_text.check_tokenizer).
"""
import base64
import json
import os
import sys
import warnings

NEEDS = ("train_text: needs Debian's python3-numpy and python3-sklearn "
         "(scripts/install-deps.sh installs them); run it with /usr/bin/python3")
try:
    import numpy as np
except ImportError as e:
    sys.exit("%s: %s" % (NEEDS, e))

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from export_text import export_text, reference_predict  # noqa: E402

# (text, sentiment, stars): 20 positive and 20 negative product reviews
REVIEWS = [
    ("Great product, works well and arrived early", "positive", 5),
    ("I love it, the quality is excellent", "positive", 5),
    ("Works as described, very happy with it", "positive", 4),
    ("Excellent value for the money", "positive", 5),
    ("The battery lasts all day, great purchase", "positive", 4),
    ("Fast shipping and the product works perfectly", "positive", 5),
    ("Really good sound quality, I recommend it", "positive", 4),
    ("Easy to set up and works great", "positive", 4),
    ("Best purchase this year, love the design", "positive", 5),
    ("Sturdy, well made and looks nice", "positive", 4),
    ("My kids love it, works well every day", "positive", 4),
    ("Good price, good quality, happy customer", "positive", 4),
    ("Exceeded my expectations, excellent build", "positive", 5),
    ("Comfortable and reliable, would buy again", "positive", 5),
    ("Nice screen and the battery is great", "positive", 4),
    ("Perfect gift, my wife loves it", "positive", 5),
    ("Simple, fast and does the job well", "positive", 4),
    ("Great support team, quick and helpful", "positive", 4),
    ("Works fine, good value", "positive", 3),
    ("Pretty good overall, recommend", "positive", 4),
    ("Terrible product, broke after one day", "negative", 1),
    ("Waste of money, does not work", "negative", 1),
    ("The battery died within a week, very disappointed", "negative", 1),
    ("Poor quality and arrived damaged", "negative", 1),
    ("Stopped working after a month, avoid", "negative", 2),
    ("Cheap plastic, feels flimsy and bad", "negative", 2),
    ("Not worth the money, returned it", "negative", 1),
    ("Awful sound, worst purchase ever", "negative", 1),
    ("Late delivery and the box was broken", "negative", 2),
    ("Does not charge, support never answered", "negative", 1),
    ("Too small and uncomfortable, disappointed", "negative", 2),
    ("Bad design, the button broke", "negative", 2),
    ("Screen flickers, poor quality control", "negative", 2),
    ("Never again, horrible experience", "negative", 1),
    ("It overheats and smells bad", "negative", 1),
    ("Broken on arrival, refund please", "negative", 1),
    ("Slow, buggy and unreliable", "negative", 2),
    ("Worse than the cheap one I had before", "negative", 2),
    ("The instructions are useless, not happy", "negative", 2),
    ("Okay but not worth the price", "negative", 3),
]

# (text, intent): 10 per intent
INTENTS = [
    ("hello there", "greeting"),
    ("hi, good morning", "greeting"),
    ("hey, how are you", "greeting"),
    ("good evening to you", "greeting"),
    ("hello, nice to meet you", "greeting"),
    ("hi there, anyone around", "greeting"),
    ("hey hey", "greeting"),
    ("good afternoon", "greeting"),
    ("hello again", "greeting"),
    ("hi, how is it going", "greeting"),
    ("where is my order", "order_status"),
    ("when will my package arrive", "order_status"),
    ("track my order please", "order_status"),
    ("has my order shipped yet", "order_status"),
    ("what is the delivery status of my package", "order_status"),
    ("my order has not arrived", "order_status"),
    ("can you check the shipping status", "order_status"),
    ("is my package on the way", "order_status"),
    ("order 1234 tracking number", "order_status"),
    ("how long until delivery", "order_status"),
    ("i want a refund", "refund"),
    ("please refund my money", "refund"),
    ("how do i return this item", "refund"),
    ("i would like my money back", "refund"),
    ("cancel and refund my purchase", "refund"),
    ("the item is broken, i want to return it", "refund"),
    ("refund request for order 1234", "refund"),
    ("can i get a refund", "refund"),
    ("return the product and give me my money back", "refund"),
    ("how long does a refund take", "refund"),
]


def b64(text):
    return {"b64": base64.b64encode(text.encode("utf-8")).decode("ascii")}


def as_text(item):
    """The text scikit-learn gets for one JSON input item."""
    if isinstance(item, dict):
        return base64.b64decode(item["b64"]).decode("utf-8")
    if isinstance(item, list):
        return " ".join(item)
    return item


# Inputs sent by the unit tests: texts (punctuation, case, repeats, digits and '_', one-letter
# words, unknown words only, empty, non-ASCII lower case), a token list and base64 bytes.
REVIEW_INPUTS = [
    "great product, works well",
    "Terrible. Broke after ONE day!!",
    ["great", "product"],
    b64("not worth the money"),
    "zzz qqq xyzzy",
    "",
    "I love it, love it, LOVE it",
    "a b c x y z",
    "works_well 2day quality quality",
    "café crème, très bien: great",
    ["battery", "died", "within", "one", "week"],
    b64("Poor QUALITY, poor support; the battery is great though"),
]
INTENT_INPUTS = [
    "Hello!",
    "where is my package?",
    ["refund", "my", "order"],
    b64("I want my money back"),
    "qwerty",
    "",
    "hi, where is my refund for order 1234",
]


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: train_text.py OUT_DIR\n")
        return 2
    out = argv[1]
    os.makedirs(out, exist_ok=True)
    try:
        from sklearn.feature_extraction.text import (CountVectorizer, TfidfTransformer,
                                                     TfidfVectorizer)
        from sklearn.linear_model import LinearRegression, LogisticRegression
        from sklearn.pipeline import Pipeline
    except ImportError as e:
        sys.exit("%s: %s" % (NEEDS, e))
    warnings.filterwarnings("ignore", message=".*(lbfgs|iterations|converge).*")

    rtexts = [t for t, _, _ in REVIEWS]
    itexts = [t for t, _ in INTENTS]
    models = {
        "text_sentiment": (Pipeline([
            ("vec", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            ("clf", LogisticRegression(C=10.0, max_iter=1000))]).fit(
                rtexts, [s for _, s, _ in REVIEWS]), rtexts, REVIEW_INPUTS),
        "text_intent": (Pipeline([
            ("vec", TfidfVectorizer(use_idf=False)),
            ("clf", LogisticRegression(C=10.0, max_iter=1000))]).fit(
                itexts, [i for _, i in INTENTS]), itexts, INTENT_INPUTS),
        "text_intent_ovr": (Pipeline([
            ("vec", CountVectorizer()),
            ("tfidf", TfidfTransformer(norm="l1")),
            ("clf", LogisticRegression(C=10.0, max_iter=1000, multi_class="ovr"))]).fit(
                itexts, [i for _, i in INTENTS]), itexts, INTENT_INPUTS),
        "text_rating": (Pipeline([
            ("vec", CountVectorizer(binary=True)),
            ("reg", LinearRegression())]).fit(
                rtexts, np.array([r for _, _, r in REVIEWS], dtype=np.float64)),
            rtexts, REVIEW_INPUTS),
    }
    expected = {"models": {}}
    for name, (pipe, corpus, inputs) in models.items():
        fname = name + ".json"
        export_text(pipe, os.path.join(out, fname), texts=corpus + [as_text(x) for x in inputs],
                    description="text demo: " + name)
        with open(os.path.join(out, fname), encoding="utf-8") as f:
            doc = json.load(f)
        texts = [as_text(x) for x in inputs]
        ref = [reference_predict(doc, x) for x in inputs]
        if doc["type"] == "regression":
            sk = pipe.predict(texts)
            if not np.allclose([r[0] for r in ref], sk, rtol=0, atol=1e-12):
                raise SystemExit("%s: the document's formula disagrees with predict" % name)
            outs = [float(v) for v in sk]
            entry = {"outputs": outs, "scores": outs, "values": None}
        else:
            proba = pipe.predict_proba(texts)
            labels = [str(v) for v in pipe.predict(texts)]
            if not np.allclose([r[2] for r in ref], proba, rtol=0, atol=1e-12):
                raise SystemExit("%s: the document's formula disagrees with predict_proba" % name)
            if labels != [r[0] for r in ref]:
                raise SystemExit("%s: labels disagree with predict" % name)
            idx = proba.argmax(axis=1)
            entry = {"outputs": labels,
                     "scores": [float(proba[r, i]) for r, i in enumerate(idx)],
                     "values": [[float(v) for v in row] for row in proba]}
        entry.update(file=fname, kind="text", inputs=inputs, texts=texts)
        expected["models"][name] = entry

    tmp = os.path.join(out, "expected_text.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, allow_nan=False, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, os.path.join(out, "expected_text.json"))  # last: means "all done"
    print("train_text: wrote %d models and expected_text.json to %s" % (len(models), out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
