"""The domain claims: every arm is a registered method that trains on its set's data at that set's encoder size, the
scorer's training and test splits are disjoint (pretraining and the few labels come from the training split only),
and the claim rows carry the paper, its statement, the set and the budget."""
import numpy as np
import pytest
import torch

from mimkit.benchmarks.claims import MAE, RANDOM
from mimkit.benchmarks.domain_claims import (DOMAIN_CLAIMS, ENCODERS, SELECTIVE_MAE_EQUAL_TIME, DomainBench, SETS,
                                              claim_rows)
from mimkit.core.registry import build_method, list_methods


@pytest.fixture(scope="module")
def benches(tmp_path_factory):
    out = tmp_path_factory.mktemp("domain_claims")
    # 5 tiles per class (3 training), 6 B-scans per class (4 training), 12 radiographs (8 training)
    sizes = {"eurosat": 5, "eurosat_patch4": 5, "oct": 6, "xray": 3}
    return {name: DomainBench(name, out / name, steps=10, batch_size=4, lr=1e-3, finetune_epochs=1, num_workers=0,
                              per_class=sizes[name]) for name in SETS}


def _arms(set_name):
    return {a.name: a for c in DOMAIN_CLAIMS if c.set == set_name for a in (c.claim.arm, c.claim.baseline)}


def test_every_claim_pits_a_registered_method_against_mae_or_random_init():
    registered = set(list_methods())
    for entry in DOMAIN_CLAIMS:
        claim = entry.claim
        assert entry.set in SETS and claim.arm != claim.baseline and claim.baseline in (MAE, RANDOM)
        assert claim.arm.method in registered, claim.arm
        assert claim.paper and claim.statement and claim.metric == "finetune"
    # arms are cached by name within a set: one name, one definition
    for set_name in SETS:
        named = [a for c in DOMAIN_CLAIMS if c.set == set_name for a in (c.claim.arm, c.claim.baseline)]
        assert len({a.name for a in named}) == len(set(named))


@pytest.mark.parametrize("set_name", SETS)
def test_each_arm_trains_on_its_sets_data_at_the_sets_encoder(benches, set_name):
    bench = benches[set_name]
    for arm in _arms(set_name).values():
        if arm.method is None:
            continue
        model = bench.model(arm, seed=0, steps=10)
        dataset = bench.dataset(arm, model)
        torch.manual_seed(0)
        method = build_method(arm.method, **model)
        assert method.encoder.in_chans == ENCODERS[set_name]["in_chans"], arm.name
        assert method.encoder.embed_dim == ENCODERS[set_name]["embed_dim"], arm.name
        items = [dataset[i] for i in range(4)]
        batch = {key: (torch.stack([item[key] for item in items]) if isinstance(items[0][key], torch.Tensor)
                       else [item[key] for item in items]) for key in items[0]}
        if "band_names" in batch:
            batch["band_names"] = items[0]["band_names"]
        loss = method(batch, step=0).loss
        assert torch.isfinite(loss) and loss.item() > 0, arm.name
        # the run's data section records how the data were read, so its tasks read them the same way
        section = bench.data_sections[arm.name]
        assert section["mean"] and len(section["mean"]) == len(section["std"])
    if set_name == "eurosat":  # the spectrum-aware arm is told the data's bands; the channel-wise arm sees 13 channels
        model = bench.model(_arms(set_name)["smarties"], 0, 10)
        bench.dataset(_arms(set_name)["smarties"], model)
        assert len(model["bands"]) == 13 and model["sensor"] == "sentinel2"
    elif set_name == "eurosat_patch4":  # the SelectiveMAE claims again, at 64 tokens per tile
        assert {a.method for a in _arms(set_name).values()} == {"mae", "selective_mae"}
        assert bench.model(MAE, 0, 10)["encoder"]["patch_size"] == 4
    elif set_name == "oct":  # UrFound learns from captions that name each training image's class folder
        urfound = _arms(set_name)["urfound"]
        dataset = bench.dataset(urfound, bench.model(urfound, 0, 10))
        assert "Optical Coherence Tomography" in dataset[0]["text"]
    else:  # Thorax MAE's recipe crops 50-100% of the radiograph, MAE's 20-100%
        assert bench.data_sections["thorax_mae"]["crop_scale"] == [0.5, 1.0]
        assert bench.data_sections["mae"]["crop_scale"] == [0.2, 1.0]


def test_the_recipe_arm_trains_with_its_recipes_layer_scale_and_gradient_clipping(benches, monkeypatch):
    """ChA-MAEViT's recipe arm: its encoder settings reach the built encoder (layer scale 1.0 on both branches of
    every block, none in the default arm) and its trainer options reach pretraining (gradient clipping 1.0)."""
    from timm.layers import LayerScale

    bench, arms = benches["eurosat"], _arms("eurosat")
    recipe, default = arms["cha_mae_recipe"], arms["cha_mae"]

    def gammas(arm):
        method = build_method(arm.method, **bench.model(arm, seed=0, steps=10))
        return [m.gamma for m in method.encoder.modules() if isinstance(m, LayerScale)]

    assert gammas(default) == []
    scales = gammas(recipe)
    assert len(scales) == 2 * ENCODERS["eurosat"]["depth"] and all(torch.all(g == 1.0) for g in scales)

    class Stop(Exception):
        pass

    seen = {}

    def pretrain(method, dataset, run, config, **options):
        seen.update(options, method=method)
        raise Stop

    monkeypatch.setattr("mimkit.core.train.pretrain", pretrain)
    with pytest.raises(Stop):
        bench.encoder(recipe, seed=7)
    assert seen["method"] == "cha_mae" and seen["trainer"] == {"gradient_clip_val": 1.0}
    assert seen["run_config"]["trainer"] == {"gradient_clip_val": 1.0}  # and the run's config.yaml records it
    with pytest.raises(Stop):
        bench.encoder(default, seed=7)
    assert seen["trainer"] is None and "trainer" not in seen["run_config"]


@pytest.mark.parametrize("set_name", SETS)
def test_scorer_splits_are_disjoint_and_labels_come_from_the_training_split(benches, set_name):
    from mimkit.core.data import few_labels

    bench = benches[set_name]
    paths = bench.split_paths()
    train, test = set(paths["train"]), set(paths["test"])
    assert train and test and not train & test
    assert all(p.is_file() for p in train | test)
    # pretraining reads the training split only
    model = bench.model(MAE, 0, 10)
    dataset = bench.dataset(MAE, model)
    assert len(dataset) == len(train)
    # the tasks' readers split the same way, and the few labels are drawn from their training split
    task, _ = bench.tasks()["finetune"]
    from mimkit.core.registry import build_method
    encoder = build_method("mae", **model).encoder
    config = {"method": "mae", "model": model, "data": bench.data_sections[MAE.name]}
    train_set, test_set = task.load(bench.root, **task.prepare(encoder, config))
    assert len(train_set) == len(train) and len(test_set) == len(test)
    if set_name == "xray":  # multi-label: fine-tuned on every training label, scored by ROC-AUC over 3 findings
        assert "labels_per_class" not in bench.tasks()["finetune"][1]
        assert train_set.classes == test_set.classes
        return
    # every class is in both splits, and the few labels are a stratified draw from the training split
    classes = {split: {p.parent.name for p in paths[split]} for split in ("train", "test")}
    assert classes["train"] == classes["test"] and len(classes["train"]) == (10 if bench.kind == "eurosat" else 3)
    assert bench.tasks()["finetune"][1]["labels_per_class"] == 10
    subset = few_labels(train_set, 2, seed=0)
    labels = np.asarray([subset[i]["label"] for i in range(len(subset))])
    assert np.bincount(labels).tolist() == [2] * len(classes["train"])


def test_equal_time_arm_is_scaled_and_selective_mae_schedule_spans_its_run(benches):
    bench = benches["eurosat"]
    bench.speed[SELECTIVE_MAE_EQUAL_TIME.name] = 1.8  # as if measured: 1.8x MAE's images/s
    assert bench.steps_for(SELECTIVE_MAE_EQUAL_TIME) == 18 and bench.steps_for(MAE) == 10
    assert bench.model(SELECTIVE_MAE_EQUAL_TIME, 0, 18)["total_steps"] == 18
    assert "total_steps" not in bench.model(MAE, 0, 10)


def test_claim_rows_carry_paper_statement_set_budget_and_verdict(benches):
    entry = next(c for c in DOMAIN_CLAIMS if c.claim.name == "selective_mae_vs_mae_equal_time")
    fake = DomainBench.__new__(DomainBench)
    fake.steps, fake.speed = 600, {SELECTIVE_MAE_EQUAL_TIME.name: 1.5}
    fake.scores = {(SELECTIVE_MAE_EQUAL_TIME.name, s): {"finetune": v} for s, v in enumerate([80.0, 82.0, 81.0])}
    fake.scores.update({(MAE.name, s): {"finetune": v} for s, v in enumerate([70.0, 71.0, 72.0])})
    (row,) = claim_rows([entry], {"eurosat": fake}, [0, 1, 2], "MAE 600 steps")
    assert row["paper"].startswith("Wang et al., SelectiveMAE") and "over 2 times" in row["statement"]
    assert row["set"] == "eurosat" and row["budget"].startswith("MAE 600 steps") and "900 steps" in row["budget"]
    assert row["difference"] == pytest.approx(10.0) and row["outcome"] == "holds" and row["seeds"] == 3
    # a set that was not run, or a claim without scores, gives no row
    assert claim_rows([entry], {}, [0], "b") == []
    fake.scores = {}
    assert claim_rows([entry], {"eurosat": fake}, [0], "b") == []


def test_cached_only_tabulates_the_stored_seeds_and_trains_nothing(tmp_path):
    """Seeds measured by other processes or machines come together: their score files copied into OUT, one
    `--cached-only` invocation writes the claims over the seeds each arm has, and no arm is trained."""
    import json

    from mimkit.benchmarks.domain_claims import main

    out = tmp_path / "claims"
    scores = out / "oct" / "scores"
    scores.mkdir(parents=True)
    stored = {("mae", 0): 60.0, ("mae", 1): 62.0, ("random_init", 0): 50.0, ("random_init", 1): 51.0,
              ("uni4eye", 0): 70.0}
    for (arm, seed), value in stored.items():
        (scores / f"{arm}_seed{seed}.json").write_text(json.dumps(
            {"set": "oct", "arm": arm, "seed": seed, "steps": 600 if arm != "random_init" else 0,
             "train_seconds": 10.0, "knn": value, "linear": value, "finetune": value}))
    assert main(["--out", str(out), "--sets", "oct", "--claims", "mae_vs_random_init_oct", "uni4eye_vs_mae",
                 "--seeds", "0", "1", "--per-class", "6", "--cached-only"]) == 0
    rows = {row["claim"]: row for row in json.loads((out / "claims.json").read_text())["rows"]}
    assert rows["mae_vs_random_init_oct"]["seeds"] == 2 and rows["mae_vs_random_init_oct"]["difference"] == 10.5
    assert rows["mae_vs_random_init_oct"]["arm"] == "mae: 61.00 +- 1.00"
    assert rows["uni4eye_vs_mae"]["seeds"] == 1  # seed 1 of uni4eye was not stored: not trained either
    assert not (out / "oct" / "arms").exists()
    arms = json.loads((out / "arms.json").read_text())["rows"]
    assert sorted((r["arm"], r["seed"]) for r in arms) == sorted(stored)
