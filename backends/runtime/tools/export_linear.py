#!/usr/bin/python3
"""export_linear.py - writes a fitted scikit-learn linear model as a Modelgate `linear` file.

The file is the JSON document described in backends/runtime/tools/README.md:

    {"format": "mg-linear", "version": 1, "kind": "linear",
     "type": "regression" | "logistic" | "multinomial",
     "n_features": D, "coef": [[D numbers], ...K rows], "intercept": [K numbers],
     "classes": [K' labels]}            # classifiers only

Supported estimators: anything with coef_ and intercept_ that predicts with X @ coef_.T +
intercept_ (LinearRegression, Ridge, Lasso, ElasticNet, SGDRegressor, ...) and
LogisticRegression (binary, one-vs-rest and multinomial). Numbers are written with repr(), so
the float64 coefficients survive the round trip bit for bit.

Use as a module:
    from export_linear import export_linear
    export_linear(model, "model.json")
or from the command line with a pickled model (only unpickle files you trust):
    python3 export_linear.py model.pkl model.json
"""
import json
import sys

import numpy as np

FORMAT = "mg-linear"
VERSION = 1


def _label(v):
    """A class label as a JSON value: numpy ints/floats/bools become Python numbers."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        f = float(v)
        return int(f) if f.is_integer() else f
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (str, int, float)):
        return v
    return str(v)


def _multi_class(model, n_classes):
    """LogisticRegression's resolved multi_class (sklearn resolves 'auto' only at fit time)."""
    mc = getattr(model, "multi_class", "auto")
    if mc == "auto":
        if n_classes <= 2 or getattr(model, "solver", "lbfgs") == "liblinear":
            return "ovr"
        return "multinomial"
    return mc


def to_document(model, description=None):
    """Returns the mg-linear document (a dict) for a fitted scikit-learn linear model."""
    if not hasattr(model, "coef_") or not hasattr(model, "intercept_"):
        raise TypeError("%s is not a fitted linear model (no coef_/intercept_)" % type(model).__name__)
    coef = np.asarray(model.coef_, dtype=np.float64)
    if coef.ndim == 1:
        coef = coef.reshape(1, -1)
    intercept = np.atleast_1d(np.asarray(model.intercept_, dtype=np.float64))
    if intercept.shape[0] == 1 and coef.shape[0] > 1:
        intercept = np.repeat(intercept, coef.shape[0])
    if intercept.shape[0] != coef.shape[0]:
        raise ValueError("intercept_ has %d values for %d coefficient rows" %
                         (intercept.shape[0], coef.shape[0]))
    doc = {"format": FORMAT, "version": VERSION, "kind": "linear"}
    classes = getattr(model, "classes_", None)
    if classes is None:
        doc["type"] = "regression"
    else:
        classes = [_label(c) for c in classes]
        mc = _multi_class(model, len(classes))
        if len(classes) == 2 and coef.shape[0] == 1:
            if mc == "multinomial":
                # sklearn: softmax([-d, d]); the same as a 2-row multinomial with -w and w.
                coef = np.vstack([-coef, coef])
                intercept = np.concatenate([-intercept, intercept])
                doc["type"] = "multinomial"
            else:
                doc["type"] = "logistic"
        elif mc == "multinomial":
            doc["type"] = "multinomial"
        else:
            doc["type"] = "logistic"  # one-vs-rest: sigmoid per class, normalised
        if coef.shape[0] != len(classes) and not (len(classes) == 2 and coef.shape[0] == 1):
            raise ValueError("%d coefficient rows for %d classes" % (coef.shape[0], len(classes)))
        doc["classes"] = classes
    if not np.all(np.isfinite(coef)) or not np.all(np.isfinite(intercept)):
        raise ValueError("coefficients must be finite")
    doc["n_features"] = int(coef.shape[1])
    doc["coef"] = [[float(v) for v in row] for row in coef]
    doc["intercept"] = [float(v) for v in intercept]
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        doc["feature_names"] = [str(n) for n in names]
    if description:
        doc["description"] = str(description)
    return doc


def export_linear(model, path, description=None):
    """Writes |model| to |path| as an mg-linear JSON file; returns the document."""
    doc = to_document(model, description)
    with open(path, "w", encoding="utf-8") as f:
        # allow_nan=False: a NaN would not be JSON; to_document already refused it.
        json.dump(doc, f, allow_nan=False, separators=(",", ":"))
        f.write("\n")
    return doc


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: export_linear.py MODEL.pkl OUT.json\n")
        return 2
    import pickle

    with open(argv[1], "rb") as f:
        model = pickle.load(f)
    doc = export_linear(model, argv[2])
    print("%s: %s, %d features, %d rows" %
          (argv[2], doc["type"], doc["n_features"], len(doc["coef"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
