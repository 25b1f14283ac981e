"""The claims benchmark: the verdict rule, arms that are registered methods at the demo size, equal-time arms scaled
by their measured speed, and the claim rows built from per-seed scores."""
import pytest

from mimkit.benchmarks import claims as claims_module
from mimkit.benchmarks.claims import CLAIMS, MAE, RANDOM, Arm, Bench, claim_rows, verdict
from mimkit.core.registry import list_methods


def test_verdict_needs_the_difference_past_the_larger_spread():
    assert verdict([90.0, 92.0, 91.0], [80.0, 81.0, 79.0])[1] == "holds"
    assert verdict([80.0, 81.0, 79.0], [90.0, 92.0, 91.0])[1] == "does not hold"
    # a 1-point lead inside a 4-point spread shows nothing
    difference, outcome = verdict([86.0, 78.0, 82.0], [81.0, 81.0, 81.0])
    assert difference == pytest.approx(1.0) and outcome.startswith("not shown")
    assert verdict([90.0], [80.0])[1] == "one seed: no verdict"


def test_every_arm_is_a_registered_method_at_the_demo_encoder_size():
    registered = set(list_methods())
    for claim in CLAIMS:
        for arm in (claim.arm, claim.baseline):
            assert arm.method is None or arm.method in registered, arm
    # each claim pits two different arms, and equal-time arms are measured against MAE's time
    assert all(claim.arm != claim.baseline for claim in CLAIMS)
    assert all(MAE in (c.arm, c.baseline) or RANDOM in (c.arm, c.baseline) for c in CLAIMS)


def test_equal_time_arms_get_steps_scaled_by_their_measured_speed(tmp_path, monkeypatch):
    monkeypatch.setattr(claims_module, "write_single_image", lambda root, copies=64: root)
    monkeypatch.setattr("mimkit.core.synthetic.write_digits", lambda root: {"pretrain": root})
    bench = Bench(tmp_path, steps=300, batch_size=64, lr=1e-3, finetune_epochs=1, num_workers=0)
    slow = Arm("slow", "simmim", equal_time=True)
    bench.speed["slow"] = 0.34  # as if measured: a third of MAE's images/s
    assert bench.steps_for(slow) == 102
    assert bench.steps_for(MAE) == 300  # not an equal-time arm: the budget itself
    assert bench.steps_for(Arm("fixed", "cropmae")) == 300
    # a speed measured once holds for every later seed and invocation on the folder (seeds run the same steps)
    monkeypatch.setattr(Bench, "relative_speed", lambda self, arm: self.speed[arm.name])
    (tmp_path / "speeds.json").write_text('{"slow": 0.5}')
    again = Bench(tmp_path, steps=300, batch_size=64, lr=1e-3, finetune_epochs=1, num_workers=0)
    assert again.steps_for(slow) == 150


def test_an_arms_encoder_settings_and_trainer_options_reach_its_model_and_pretraining(tmp_path, monkeypatch):
    monkeypatch.setattr("mimkit.core.synthetic.write_digits", lambda root: {"pretrain": root})
    bench = Bench(tmp_path, steps=300, batch_size=64, lr=1e-3, finetune_epochs=1, num_workers=0)
    arm = Arm("deeper", "mae", MAE.config, encoder=(("depth", 3),), trainer=(("gradient_clip_val", 0.5),))
    assert bench.model(arm, 0, 300)["depth"] == 3 and bench.model(MAE, 0, 300)["depth"] != 3
    seen = {}

    class Stop(Exception):
        pass

    def pretrain(method, dataset, run, config, **options):
        seen.update(options)
        raise Stop

    monkeypatch.setattr("mimkit.core.train.pretrain", pretrain)
    monkeypatch.setattr(Bench, "dataset", lambda self, arm, model: None)
    with pytest.raises(Stop):
        bench.encoder(arm, 0)
    assert seen["trainer"] == {"gradient_clip_val": 0.5} and seen["method_config"]["depth"] == 3


def test_claim_rows_report_means_spreads_and_outcome():
    claim = CLAIMS[0]
    bench = type("Scores", (), {})()
    bench.scores = {(claim.arm.name, s): {"finetune": v, "knn": 0.0} for s, v in enumerate([95.0, 94.0, 96.0])}
    bench.scores.update({(claim.baseline.name, s): {"finetune": v, "knn": 0.0} for s, v in enumerate([77.0, 75.0, 79.0])})
    (row,) = claim_rows([claim], bench, [0, 1, 2])
    assert row["arm"] == "mae: 95.00 +- 0.82" and row["baseline"] == "random_init: 77.00 +- 1.63"
    assert row["difference"] == pytest.approx(18.0) and row["outcome"] == "holds" and row["seeds"] == 3
    # a claim whose arms have no scores yet is left out, not reported empty
    assert claim_rows([CLAIMS[1]], bench, [0, 1, 2]) == []
