import json
from io import StringIO

import numpy as np
import pytest
from django.core.management import call_command

from recommender.evaluation.metrics import chance_precision, leave_one_out_neighbours, retrieval_scores


def test_retrieval_scores_on_a_worked_example():
    labels = np.array(["a", "a", "a", "b", "b", "c"])
    neighbours = np.array(
        [
            [1, 3],  # a: hit, miss -> P=0.5, AP=(1/1)/2=0.5
            [3, 0],  # a: miss, hit -> P=0.5, AP=(1/2)/2=0.25
            [0, 1],  # a: hit, hit -> P=1, AP=(1+1)/2=1
            [4, 0],  # b: hit, miss -> P=0.5, AP=1/min(2,1)=1
            [5, 0],  # b: miss, miss -> P=0, AP=0
            [0, 1],  # c: no other c -> P=0, AP undefined
        ]
    )
    scores = retrieval_scores(neighbours, labels)
    assert scores.precision == pytest.approx((0.5 + 0.5 + 1 + 0.5 + 0 + 0) / 6)
    assert scores.average_precision == pytest.approx((0.5 + 0.25 + 1 + 1 + 0) / 5)
    assert scores.macro_precision == pytest.approx((2 / 3 + 0.25 + 0) / 3)
    assert scores.macro_average_precision == pytest.approx((1.75 / 3 + 0.5) / 2)
    assert chance_precision(labels) == pytest.approx((3 * 2 + 2 * 1) / (6 * 5))


def test_leave_one_out_never_returns_the_query():
    vectors = np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 2]]
    neighbours = leave_one_out_neighbours(vectors, 1)
    assert neighbours[:, 0].tolist()[:4] == [1, 0, 3, 2]


@pytest.mark.slow
@pytest.mark.django_db
def test_evaluate_recommender_on_the_shared_catalogue(shared_slice, tmp_path):
    out = StringIO()
    report_path = tmp_path / "evaluation.json"

    call_command(
        "evaluate_recommender", "--baselines", "--control", "--sample", "100", "--json", str(report_path), stdout=out
    )

    report = json.loads(report_path.read_text())
    assert report["products"] == shared_slice
    article = report["quality"]["article type"]
    assert article["precision"] > 0.6 and article["precision"] > 3 * article["chance_precision"]
    assert article["precision"] > report["raw_pixels"]["article type"]["precision"], "better than raw pixels"
    for label, scores in report["random_control"].items():
        assert abs(scores["precision"] - scores["chance_precision"]) < 0.05, f"random {label} scores near chance"
    assert report["served_path"]["recall"] >= 0.95
    brute = report["brute_force_refit"]
    assert brute["queries"] == 50 and brute["recall_of_exact"] == 1.0, "the baseline searches the same thing"
    text = out.getvalue()
    assert "random control" in text and "raw 32x32 pixels" in text and "recall@5" in text
