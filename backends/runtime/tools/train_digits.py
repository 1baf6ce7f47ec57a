#!/usr/bin/python3
"""train_digits.py - trains the demo and test models on scikit-learn's 8x8 digits.

    /usr/bin/python3 train_digits.py OUT_DIR

writes into OUT_DIR (created if needed), in a few seconds on two cores:

    xgb_digits.json, xgb_digits.ubj   XGBClassifier, 10 classes (multi:softprob), JSON and UBJSON
    xgb_digits_binary.json            XGBClassifier, "is the digit >= 5" (binary:logistic)
    xgb_digits_reg.json               XGBRegressor, the digit as a number (reg:squarederror)
    xgb_digits_softmax.json           XGBClassifier, multi:softmax (labels only in Python)
    xgb_digits_gblinear.json          XGBRegressor with the gblinear booster
    linear_multinomial.json           LogisticRegression, 10 classes (softmax)
    linear_binary.json                LogisticRegression, "is the digit >= 5"
    linear_ovr.json                   LogisticRegression(multi_class="ovr"), 10 classes
    linear_regression.json            LinearRegression, the digit as a number
    embedding_digits.mgemb            300 digit images (scaled to 0..1) as items, int64 ids, cosine
    embedding_random.mgemb            500 seeded random 16-dim items, string ids, dot product
    expected.json                     the inputs the unit tests send and what Python answers

Every model is trained on the first 1500 digits; the test inputs come from the rest. Training is
deterministic (fixed seeds, one thread for XGBoost), so two runs write the same predictions.
expected.json is computed from the written files reloaded by the libraries themselves
(xgboost.Booster, the linear formulas of scikit-learn, write_embedding.top_k), and for the
linear models also checked against the estimator's own predict_proba/predict.
"""
import json
import os
import sys
import warnings

NEEDS = ("train_digits: needs Debian's python3-numpy, python3-sklearn and python3-xgboost "
         "(scripts/install-deps.sh installs them); run it with /usr/bin/python3")
try:
    import numpy as np
except ImportError as e:
    sys.exit("%s: %s" % (NEEDS, e))

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from export_linear import export_linear  # noqa: E402
from write_embedding import read_index, top_k, write_index  # noqa: E402


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def linear_reference(doc, x):
    """What the runtime must answer for the mg-linear document |doc| on rows |x| (float64):
    (outputs as JSON values, scores, per-class probabilities or None)."""
    coef = np.asarray(doc["coef"], dtype=np.float64)
    b = np.asarray(doc["intercept"], dtype=np.float64)
    z = x @ coef.T + b
    t = doc["type"]
    if t == "regression":
        if z.shape[1] == 1:
            return [float(v) for v in z[:, 0]], [float(v) for v in z[:, 0]], None
        return [[float(v) for v in r] for r in z], [float(r[0]) for r in z], None
    classes = doc["classes"]
    if t == "multinomial":
        p = softmax(z)
    elif z.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
        p = np.stack([1 - p1, p1], axis=1)
    else:
        p = 1.0 / (1.0 + np.exp(-z))
        p /= p.sum(axis=1, keepdims=True)
    idx = p.argmax(axis=1)
    return ([classes[i] for i in idx], [float(p[r, i]) for r, i in enumerate(idx)],
            [[float(v) for v in r] for r in p])


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: train_digits.py OUT_DIR\n")
        return 2
    out = argv[1]
    os.makedirs(out, exist_ok=True)

    try:
        import xgboost as xgb
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LinearRegression, LogisticRegression
    except ImportError as e:
        sys.exit("%s: %s" % (NEEDS, e))

    X, y = load_digits(return_X_y=True)  # X: 1797 x 64 float64 in 0..16, y: 0..9
    Xtr, ytr = X[:1500], y[:1500]
    ybin = (ytr >= 5).astype(int)
    # Test inputs: held-out digits, plus one with fractional values so that float parsing and
    # the float64 -> float32 conversion inside XGBoost are exercised too.
    rows = [X[i] for i in (1500, 1537, 1601, 1650, 1702, 1749, 1796)]
    frac = X[1555] * 0.73 + 0.11
    rows.append(frac)
    inputs = np.asarray(rows, dtype=np.float64)

    expected = {"inputs": inputs.tolist(), "n_features": 64, "models": {}}
    models = expected["models"]

    # --- xgboost: one thread and fixed seeds keep the trees identical from run to run
    common = dict(n_estimators=20, max_depth=4, learning_rate=0.3, tree_method="hist",
                  n_jobs=1, random_state=0)
    clf = xgb.XGBClassifier(objective="multi:softprob", **common)
    clf.fit(Xtr, ytr)
    clf.save_model(os.path.join(out, "xgb_digits.json"))
    clf.save_model(os.path.join(out, "xgb_digits.ubj"))
    binc = xgb.XGBClassifier(objective="binary:logistic", **common)
    binc.fit(Xtr, ybin)
    binc.save_model(os.path.join(out, "xgb_digits_binary.json"))
    reg = xgb.XGBRegressor(objective="reg:squarederror", **common)
    reg.fit(Xtr, ytr.astype(np.float64))
    reg.save_model(os.path.join(out, "xgb_digits_reg.json"))
    # Two less common shapes: multi:softmax (the runtime computes probabilities from margins)
    # and a gblinear booster (no in-place prediction, and not thread-safe: serialised).
    soft = xgb.XGBClassifier(objective="multi:softmax", **dict(common, n_estimators=5))
    soft.fit(Xtr, ytr)
    soft.save_model(os.path.join(out, "xgb_digits_softmax.json"))
    lin_b = xgb.XGBRegressor(booster="gblinear", n_estimators=10, learning_rate=0.3, n_jobs=1,
                             random_state=0)
    lin_b.fit(Xtr, ytr.astype(np.float64))
    lin_b.save_model(os.path.join(out, "xgb_digits_gblinear.json"))

    for name, fname, task in (("xgb_multi", "xgb_digits.json", "multi"),
                              ("xgb_multi_ubj", "xgb_digits.ubj", "multi"),
                              ("xgb_binary", "xgb_digits_binary.json", "binary"),
                              ("xgb_reg", "xgb_digits_reg.json", "reg"),
                              ("xgb_softmax", "xgb_digits_softmax.json", "softmax"),
                              ("xgb_gblinear", "xgb_digits_gblinear.json", "gblinear")):
        booster = xgb.Booster(model_file=os.path.join(out, fname))
        if task == "gblinear":  # DMatrix prediction: gblinear has no in-place predict
            p = booster.predict(xgb.DMatrix(inputs))
        elif task == "softmax":
            p = booster.inplace_predict(inputs, predict_type="margin")
        else:
            p = booster.inplace_predict(inputs)  # float32, as the runtime gets it
        if task == "softmax":
            sk = soft.predict(inputs)
            prob = softmax(p.astype(np.float64))
            idx = p.argmax(axis=1)
            entry = {"outputs": [int(i) for i in idx],
                     "scores": [float(prob[r, i]) for r, i in enumerate(idx)],
                     "values": [[float(v) for v in r] for r in prob]}
            p = idx  # compared with the estimator's labels below
        elif task == "gblinear":
            sk = lin_b.predict(inputs)
            entry = {"outputs": [float(v) for v in p], "scores": [float(v) for v in p],
                     "values": None}
        elif task == "multi":
            sk = clf.predict_proba(inputs)
            idx = p.argmax(axis=1)
            entry = {"outputs": [int(i) for i in idx],
                     "scores": [float(p[r, i]) for r, i in enumerate(idx)],
                     "values": [[float(v) for v in r] for r in p]}
        elif task == "binary":
            sk = binc.predict_proba(inputs)[:, 1]
            lab = (p > 0.5).astype(int)
            entry = {"outputs": [int(v) for v in lab],
                     "scores": [float(v if l else 1 - v) for v, l in zip(p.astype(np.float64), lab)],
                     "values": [[float(1 - v), float(v)] for v in p.astype(np.float64)]}
        else:
            sk = reg.predict(inputs)
            entry = {"outputs": [float(v) for v in p], "scores": [float(v) for v in p],
                     "values": None}
        if not np.allclose(p, sk, rtol=0, atol=1e-7):
            raise SystemExit("%s: reloaded booster disagrees with the estimator" % name)
        entry.update(file=fname, kind="xgboost")
        models[name] = entry

    # --- linear: lbfgs on raw 0..16 pixels converges slowly; the iteration cap keeps training
    # fast and deterministic, and the exported coefficients are whatever the fit reached.
    warnings.filterwarnings("ignore", message=".*(lbfgs|iterations|converge).*")
    lin = {
        "linear_multinomial": LogisticRegression(max_iter=200).fit(Xtr, ytr),
        "linear_binary": LogisticRegression(max_iter=200).fit(Xtr, ybin),
        "linear_ovr": LogisticRegression(max_iter=200, multi_class="ovr").fit(Xtr, ytr),
        "linear_regression": LinearRegression().fit(Xtr, ytr.astype(np.float64)),
    }
    for name, est in lin.items():
        fname = name + ".json"
        doc = export_linear(est, os.path.join(out, fname), description="digits demo: " + name)
        with open(os.path.join(out, fname), encoding="utf-8") as f:
            doc = json.load(f)
        outs, scores, probs = linear_reference(doc, inputs)
        if probs is not None:
            if not np.allclose(probs, est.predict_proba(inputs), rtol=0, atol=1e-12):
                raise SystemExit("%s: formula disagrees with predict_proba" % name)
            if [int(v) for v in est.predict(inputs)] != outs:
                raise SystemExit("%s: labels disagree with predict" % name)
        elif not np.allclose(outs, est.predict(inputs), rtol=0, atol=1e-9):
            raise SystemExit("%s: formula disagrees with predict" % name)
        models[name] = {"file": fname, "kind": "linear", "outputs": outs, "scores": scores,
                        "values": probs}

    # --- embedding: digits as items (a nearest-neighbour search) and a random string-id index
    items = (X[:300] / 16.0).astype(np.float32)
    write_index(os.path.join(out, "embedding_digits.mgemb"), items, list(range(1000, 1300)),
                metric="cosine", k=5, user_feature="user_vector",
                description="300 digits, ids 1000+row")
    rng = np.random.default_rng(20240601)
    rvec = (rng.standard_normal((500, 16)) * 0.25).astype(np.float32)
    rids = ["item-%03d" % i for i in range(500)]
    write_index(os.path.join(out, "embedding_random.mgemb"), rvec, rids, metric="dot", k=10,
                user_feature="user_vector", description="500 seeded random items")
    queries_d = (inputs / 16.0).astype(np.float32)
    queries_r = (rng.standard_normal((6, 16)) * 0.5).astype(np.float32)
    for name, fname, queries, k in (("embedding_digits", "embedding_digits.mgemb", queries_d, 5),
                                    ("embedding_random", "embedding_random.mgemb", queries_r, 10)):
        header, vecs, ids = read_index(os.path.join(out, fname))
        outs, scores, values = [], [], []
        for q in queries:
            res = top_k(vecs, q, k, header["metric"])
            outs.append([ids[i] for i, _ in res])
            scores.append(res[0][1])
            values.append([s for _, s in res])
        models[name] = {"file": fname, "kind": "embedding", "k": k,
                        "inputs": [[float(v) for v in q] for q in queries],
                        "outputs": outs, "scores": scores, "values": values}

    tmp = os.path.join(out, "expected.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, os.path.join(out, "expected.json"))  # last: its presence means "all done"
    print("train_digits: wrote %d models and expected.json to %s" % (len(models), out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
