"""bench/tsv.py - what every bench script's summary step needs: read its runs.tsv, turn cells
into numbers, take medians, print numbers or "-". Imported by the scripts' inline Python
(PYTHONPATH=bench/); standard library only."""

import csv
import statistics


def read_rows(path):
    """The tab-separated runs file as a list of dicts (header row = keys)."""
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def num(x):
    """A cell as a float, or None when it is not a number ("-", "", "n/a")."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def med(v):
    """The median of the numbers in |v| (None entries skipped), or None when there are none."""
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def fmt(x, spec):
    """|x| formatted with |spec|, or "-" for None."""
    return "-" if x is None else format(x, spec)
