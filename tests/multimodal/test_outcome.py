"""The demo's data (`write_digits(outcome=True)`): the target needs the table's arm and the image's digit, the arm
is no function of the image, and the rest of the table is the plain digits set's."""
import numpy as np
import pandas as pd
import pytest

from mimkit.benchmarks.tasks import get_task


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    from mimkit.multimodal.synthetic import write_digits

    root = tmp_path_factory.mktemp("digits")
    return write_digits(root / "plain", count=200, size=16), write_digits(root / "outcome", count=200, size=16,
                                                                          outcome=True)


def test_the_outcome_is_the_digit_in_arm_a_and_the_digit_plus_five_in_arm_b(written):
    from sklearn.datasets import load_digits

    from mimkit.multimodal.synthetic import outcome_of

    plain, outcome = written
    digits = load_digits().target
    for table in [pd.concat([pd.read_csv(outcome / f"{split}.csv") for split in ("train", "test")])]:
        assert "digit" not in table and {"arm", "outcome"} <= set(table)
        shown = np.array([digits[int(name.split("_")[1][:4])] for name in table["image"]])
        known = table["arm"].notna()  # arm cells go missing like the others; the outcome never does
        assert table["outcome"].notna().all() and 0.05 < (~known).mean() < 0.4
        expected = [outcome_of(d, a) for d, a in zip(shown[known], table["arm"][known])]
        assert (table["outcome"][known].to_numpy() == expected).all()
        # the image alone cannot tell: every digit appears in both arms (all 200 rows), with different outcomes
        both = table[known].assign(digit=shown[known]).groupby("digit")["arm"].nunique()
        assert (both == 2).all()
    assert outcome_of(3, "A") == 3 and outcome_of(7, "B") == 2
    # the rest of the table, its missing cells and the split are the plain set's
    a, b = pd.read_csv(plain / "train.csv"), pd.read_csv(outcome / "train.csv")
    pd.testing.assert_frame_equal(a.drop(columns="digit"), b.drop(columns=["arm", "outcome"]))


def test_the_outcome_tasks_read_the_arm_as_a_feature_and_the_outcome_as_target(written):
    _, outcome = written
    train, test = get_task("synthetic-digits-outcome-complete").load(outcome, img_size=16, in_chans=1)
    assert train.preprocessor.target == "outcome" and "arm" in train.preprocessor.names
    assert "outcome" not in train.preprocessor.names and train.classes == [str(d) for d in range(10)]
    assert get_task("synthetic-digits-outcome-value-0.9").settings["rate"] == 0.9
