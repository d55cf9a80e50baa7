"""The built-in dataset: the creditcard.csv contract, determinism, URIs, and a learnable problem."""

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ccfraud import preprocess, schema, synthetic

ROWS, FRAUDS = 5000, 50


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return synthetic.generate(rows=ROWS, frauds=FRAUDS, seed=3)


@pytest.fixture(scope="module")
def medium() -> pd.DataFrame:
    """Enough frauds for distribution checks to be far from chance."""
    return synthetic.generate(rows=40_000, frauds=800, seed=5)


# ---------------------------------------------------------------- the file contract


def test_columns_order_and_dtypes(small):
    assert list(small.columns) == schema.COLUMNS
    assert all(small[c].dtype == np.float64 for c in schema.FEATURES)
    assert small[schema.TARGET].dtype == np.int64
    assert isinstance(small.index, pd.RangeIndex) and small.index[0] == 0


@pytest.mark.parametrize("rows, frauds", [(2, 1), (10, 9), (1000, 1), (ROWS, FRAUDS), (3001, 700)])
def test_exact_row_and_fraud_counts(rows, frauds):
    frame = synthetic.generate(rows=rows, frauds=frauds, seed=0)
    assert len(frame) == rows
    assert int(frame[schema.TARGET].sum()) == frauds
    assert set(frame[schema.TARGET].unique()) == {0, 1}


def test_schema_validator_accepts_the_output(small):
    clean = schema.validate_dataset(small, where="synthetic")
    pd.testing.assert_frame_equal(clean, small)


def test_time_counts_seconds_over_two_days_in_order(small):
    time = small[schema.TIME]
    assert time.is_monotonic_increasing
    assert time.iloc[0] == 0.0, "Time counts from the first transaction"
    assert time.max() <= synthetic.LAST_SECOND
    assert time.max() > 0.95 * synthetic.LAST_SECOND, "the two days are covered"
    assert np.array_equal(time, np.floor(time)), "whole seconds, as in the real file"


def test_amounts_are_non_negative_euros_with_cents(small):
    amount = small[schema.AMOUNT].to_numpy()
    assert (amount >= 0).all()
    cents = amount * 100
    assert np.allclose(cents, np.round(cents), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- determinism


def test_same_arguments_give_the_same_frame_bit_for_bit(small):
    again = synthetic.generate(rows=ROWS, frauds=FRAUDS, seed=3)
    pd.testing.assert_frame_equal(again, small, check_exact=True)


def test_another_seed_gives_other_data(small):
    other = synthetic.generate(rows=ROWS, frauds=FRAUDS, seed=4)
    for column in (schema.TIME, "V1", "V14", schema.AMOUNT):
        assert not np.array_equal(other[column], small[column]), column
    assert not np.array_equal(other[schema.TARGET], small[schema.TARGET])


# ---------------------------------------------------------------- argument validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rows": 1, "frauds": 1}, r"rows must be between 2 .* got 1"),
        ({"rows": synthetic.MAX_ROWS + 1, "frauds": 1}, r"rows must be .* and 20,000,000, got 20000001"),
        ({"rows": 100, "frauds": 0}, r"frauds must be at least 1 and less than rows=100.*got 0"),
        ({"rows": 100, "frauds": 100}, r"frauds must be at least 1 and less than rows=100.*got 100"),
        ({"rows": 100, "frauds": 5, "seed": -1}, r"seed must be a non-negative integer, got -1"),
        ({"rows": 100.0, "frauds": 5}, r"rows must be an integer, got 100.0"),
        ({"rows": 100, "frauds": "5"}, r"frauds must be an integer, got '5'"),
        ({"rows": 100, "frauds": True}, r"frauds must be an integer, got True"),
    ],
)
def test_invalid_arguments_are_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.generate(**kwargs)


def test_numpy_integers_are_accepted():
    frame = synthetic.generate(rows=np.int64(200), frauds=np.int32(4), seed=np.int64(2))
    assert (len(frame), int(frame[schema.TARGET].sum())) == (200, 4)


# ---------------------------------------------------------------- synthetic:// URIs

DEFAULTS = {"rows": 284_807, "frauds": 492, "seed": 0, "partitions": 1}


@pytest.mark.parametrize("uri", ["synthetic://", "synthetic:", "synthetic:///", "synthetic://?"])
def test_uri_without_parameters_means_the_real_file_size(uri):
    assert synthetic.parse_uri(uri) == DEFAULTS


def test_uri_parameters_override_the_defaults():
    assert synthetic.parse_uri("synthetic://?rows=20000&frauds=200&seed=1") == {
        "rows": 20000,
        "frauds": 200,
        "seed": 1,
        "partitions": 1,
    }
    assert synthetic.parse_uri("synthetic:?seed=7") == {**DEFAULTS, "seed": 7}


def test_generate_from_uri_equals_generate():
    uri = "synthetic://?rows=1500&frauds=30&seed=9"
    pd.testing.assert_frame_equal(
        synthetic.generate_from_uri(uri), synthetic.generate(rows=1500, frauds=30, seed=9), check_exact=True
    )


@pytest.mark.parametrize(
    "uri, message",
    [
        ("synthetic://?rows=100&fraud=5", r"unknown parameter 'fraud'"),
        ("synthetic://?rows=abc", r"parameter 'rows' must be a whole number, got 'abc'"),
        ("synthetic://?rows=2e4", r"parameter 'rows' must be a whole number, got '2e4'"),
        ("synthetic://?seed=1.5", r"parameter 'seed' must be a whole number, got '1.5'"),
        ("synthetic://?frauds=", r"parameter 'frauds' must be a whole number, got ''"),
        ("synthetic://?rows=10&rows=20", r"parameter 'rows' is given more than once"),
        ("synthetic://?rows", r"malformed query"),
        ("synthetic://?rows=100&frauds=100", r"frauds must be at least 1 and less than rows=100"),
        ("synthetic://?seed=-3", r"seed must be a non-negative integer, got -3"),
        ("synthetic://?seed=-3&partitions=2", r"seed must be a non-negative integer, got -3"),
        ("synthetic://?partitions=0", r"partitions must be at least 1, got 0"),
        ("synthetic://?rows=10&frauds=2&partitions=11", r"rows must be between partitions=11 .*got 10"),
        ("synthetic://?rows=40000001&frauds=5&partitions=2", r"more than 20,000,000 rows in one partition"),
        ("synthetic://data.csv", r"takes only query parameters"),
        ("synthetic://?rows=100#x", r"takes only query parameters"),
        ("s3://bucket/key.csv", r"not a synthetic: URI"),
        ("creditcard.csv", r"not a synthetic: URI"),
    ],
)
def test_invalid_uris_are_rejected_naming_what_is_wrong(uri, message):
    with pytest.raises(ValueError, match=message):
        synthetic.parse_uri(uri)
    with pytest.raises(ValueError, match=message):
        synthetic.generate_from_uri(uri)


# ---------------------------------------------------------------- partitions

#: SHA-256 of ``generate()`` and of ``generate(rows=2000, frauds=20, seed=1)`` (column names,
#: dtypes, then each column's bytes) as the generator made them before partitions existed:
#: the default dataset, and so the committed metrics, must never change by accident.
DEFAULT_DIGEST = "32221c243e7444df6e9e9a9886f8a5c94e1d7df9f8936a1e754d94c51b6f07ff"
SMALL_DIGEST = "855fd288ee42f3226441f16a4c3dbb0cd06621d746e269bb10423ba2e08cb5da"


def digest(frame: pd.DataFrame) -> str:
    import hashlib

    sha = hashlib.sha256()
    sha.update(",".join(frame.columns).encode())
    sha.update(",".join(map(str, frame.dtypes)).encode())
    for column in frame.columns:
        sha.update(np.ascontiguousarray(frame[column].to_numpy()).tobytes())
    return sha.hexdigest()


def test_the_default_dataset_is_one_partition_and_unchanged():
    spec = synthetic.spec_from_uri("synthetic://")
    assert spec == synthetic.Spec(rows=284_807, frauds=492, seed=0, partitions=1)
    assert digest(synthetic.generate_partition(spec, 0)) == DEFAULT_DIGEST
    assert digest(synthetic.generate_from_uri("synthetic://?rows=2000&frauds=20&seed=1")) == SMALL_DIGEST
    assert digest(synthetic.generate(rows=2000, frauds=20, seed=1)) == SMALL_DIGEST


def test_partition_count_comes_from_the_uri_alone():
    assert synthetic.parse_uri("synthetic://?rows=2848070&frauds=4920&seed=3")["partitions"] == 10
    assert synthetic.parse_uri("synthetic://?rows=284808")["partitions"] == 2
    assert synthetic.parse_uri("synthetic://?rows=284807")["partitions"] == 1
    assert synthetic.parse_uri("synthetic://?rows=1000&frauds=10&partitions=3")["partitions"] == 3


PARTITIONED = synthetic.Spec(rows=3001, frauds=7, seed=4, partitions=4)


@pytest.fixture(scope="module")
def partitioned() -> list[pd.DataFrame]:
    return list(synthetic.iter_partitions(PARTITIONED))


def test_partitions_add_up_to_exact_totals_with_time_increasing(partitioned):
    assert [len(p) for p in partitioned] == [751, 750, 750, 750]
    assert [int(p[schema.TARGET].sum()) for p in partitioned] == [2, 2, 2, 1]
    whole = pd.concat(partitioned, ignore_index=True)
    assert whole[schema.TIME].is_monotonic_increasing
    for index, part in enumerate(partitioned):
        assert list(part.columns) == schema.COLUMNS and part[schema.TARGET].dtype == np.int64
        start = index * synthetic.PARTITION_SECONDS
        assert start <= part[schema.TIME].min() and part[schema.TIME].max() < start + synthetic.PARTITION_SECONDS
    pd.testing.assert_frame_equal(synthetic.generate_from_uri("synthetic://?rows=3001&frauds=7&seed=4&partitions=4"),
                                  whole, check_exact=True)
    schema.validate_dataset(whole, where="partitioned")


def test_a_partition_generated_alone_equals_the_same_partition_of_the_whole(partitioned):
    for index in (2, 0):
        alone = synthetic.generate_partition(synthetic.Spec(rows=3001, frauds=7, seed=4, partitions=4), index)
        pd.testing.assert_frame_equal(alone, partitioned[index], check_exact=True)
    other_seed = synthetic.generate_partition(synthetic.Spec(rows=3001, frauds=7, seed=5, partitions=4), 2)
    features = schema.PCA_FEATURES
    assert not np.array_equal(other_seed[features].to_numpy(), partitioned[2][features].to_numpy())


def test_partitions_are_independent_draws(partitioned):
    first, second = (p[schema.PCA_FEATURES].to_numpy() for p in partitioned[:2])
    assert not np.array_equal(first[:100], second[:100])


def test_a_partition_may_hold_no_fraud_but_the_dataset_must():
    spec = synthetic.Spec(rows=40, frauds=1, seed=0, partitions=4)
    assert [int(p[schema.TARGET].sum()) for p in synthetic.iter_partitions(spec)] == [1, 0, 0, 0]
    with pytest.raises(ValueError, match="frauds must be at least 1"):
        synthetic.Spec(rows=40, frauds=0, partitions=4)
    with pytest.raises(IndexError, match="partition 4 does not exist"):
        synthetic.generate_partition(spec, 4)


def test_a_dataset_too_large_for_one_frame_is_refused_by_generate_from_uri():
    uri = "synthetic://?rows=50000001"
    assert synthetic.parse_uri(uri)["partitions"] == 176
    with pytest.raises(ValueError, match=r"more than 20,000,000 for one in-memory frame"):
        synthetic.generate_from_uri(uri)


# ---------------------------------------------------------------- realism


def test_components_are_centred_uncorrelated_and_ordered_by_spread(medium):
    components = medium[schema.PCA_FEATURES]
    assert np.abs(components.mean()).max() < 1e-9, "centred like PCA output"
    legit = components[medium[schema.TARGET] == 0]
    correlation = legit.corr().to_numpy()
    off_diagonal = correlation[~np.eye(len(schema.PCA_FEATURES), dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.05
    spread = legit.std().to_numpy()
    assert spread[0] == pytest.approx(1.96, rel=0.15) and spread[-1] == pytest.approx(0.33, rel=0.15)
    assert pd.Series(spread).corr(pd.Series(np.arange(len(spread))), method="spearman") < -0.95


def test_some_components_have_heavy_tails(medium):
    kurtosis = medium.loc[medium[schema.TARGET] == 0, schema.PCA_FEATURES].kurt()
    assert (kurtosis > 3).sum() >= 5, "several components far from Gaussian, as in the real data"


@pytest.mark.parametrize("feature, sign", [("V14", -1), ("V12", -1), ("V10", -1), ("V17", -1), ("V3", -1),
                                           ("V4", 1), ("V11", 1)])
def test_frauds_are_shifted_on_the_informative_features(medium, feature, sign):
    is_fraud = medium[schema.TARGET] == 1
    shift = medium.loc[is_fraud, feature].mean() - medium.loc[~is_fraud, feature].mean()
    legit_std = medium.loc[~is_fraud, feature].std()
    assert sign * shift > 1.0 * legit_std


def test_some_frauds_stand_out_only_through_an_interaction(medium):
    first, second = synthetic.INTERACTION
    is_fraud = (medium[schema.TARGET] == 1).to_numpy()
    product = (medium[first] / medium[first].std() * medium[second] / medium[second].std()).to_numpy()
    far_out = product > 6.0
    assert far_out[is_fraud].mean() > 0.2, "a sizeable share of frauds sits in the two far corners"
    assert far_out[~is_fraud].mean() < 0.002, "where legitimate rows almost never go"
    # Each feature on its own says nothing: those frauds are split between opposite corners.
    corner = medium.loc[is_fraud & far_out, first]
    assert 0.3 < (corner > 0).mean() < 0.7


def test_fewer_transactions_at_night(medium):
    hour = (medium[schema.TIME] // 3600) % 24
    night = hour.between(1, 5).sum() / 5
    day = hour.between(10, 20).sum() / 11
    assert night < 0.5 * day


def test_amounts_are_skewed_like_card_payments(medium):
    legit = medium.loc[medium[schema.TARGET] == 0, schema.AMOUNT]
    assert 10 < legit.median() < 40
    assert legit.mean() > 2.5 * legit.median(), "a long right tail"
    assert legit.quantile(0.99) > 300
    # Related to the components like the real Amount: down with V2, up with V7 and V20.
    rank = medium.loc[legit.index, ["V2", "V7", "V20"]].corrwith(legit, method="spearman")
    assert rank["V2"] < -0.2 and rank["V7"] > 0.1 and rank["V20"] > 0.1


def test_fraud_amounts_include_many_card_tests(medium):
    is_fraud = medium[schema.TARGET] == 1
    fraud, legit = medium.loc[is_fraud, schema.AMOUNT], medium.loc[~is_fraud, schema.AMOUNT]
    assert (fraud == 1.0).mean() > 2 * (legit == 1.0).mean(), "exactly 1.00: is the card alive?"
    assert fraud.median() < legit.median()


# ---------------------------------------------------------------- a learnable, non-trivial problem


def test_trees_beat_a_linear_model_on_a_time_split_and_neither_is_perfect():
    """The interaction frauds reward a nonlinear model; the camouflaged ones cap everyone."""
    splits = preprocess.split(synthetic.generate(rows=30_000, frauds=300, seed=0), "time")
    train, test = splits.train, splits.test
    fraud_rate = test[schema.TARGET].mean()
    scores = {}
    for name, model in {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "hist_gb": HistGradientBoostingClassifier(random_state=0),
    }.items():
        model.fit(train[schema.FEATURES], train[schema.TARGET])
        probability = model.predict_proba(test[schema.FEATURES])[:, 1]
        scores[name] = average_precision_score(test[schema.TARGET], probability)
    assert scores["logreg"] > 10 * fraud_rate, scores
    assert scores["hist_gb"] > scores["logreg"] + 0.05, scores
    assert scores["hist_gb"] < 0.97, f"camouflaged frauds keep the problem from being trivial: {scores}"
