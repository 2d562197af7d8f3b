"""Specs shared by several benchmarks."""

BANK_SPEC = {
    "name": "bank", "task": "binary", "target": "y", "positive_class": "yes",
    "features": {c: {"type": "numeric"} for c in ("age", "balance", "day", "campaign", "pdays", "previous")}
    | {c: {"type": "categorical"} for c in ("job", "marital", "education", "default", "housing", "loan",
                                             "contact", "month", "poutcome")},
    "exclude": ["duration"],
    "costs": {"true_positive": -50, "false_positive": 5, "true_negative": 0, "false_negative": 0},
    "training": {"num_boost_round": 300},
}
