"""The forecaster family: every architecture x normalisation x channel mode, what the wrappers guarantee (scale
restored, nothing read but the window, channels independent), and that each one trains and round-trips."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from rnn_pipeline.bundle import load_bundle
from rnn_pipeline.data.scaling import Scaling
from rnn_pipeline.forecasting.bundle import ForecastBundle
from rnn_pipeline.forecasting.ensemble import ForecastEnsemble, ensemble_of, greedy_selection
from rnn_pipeline.forecasting.windows import prepare_series
from rnn_pipeline.models import (
    ARCHITECTURES,
    CHANNEL_MODES,
    NORMS,
    DirectForecaster,
    ForecasterSpec,
    SegmentForecaster,
    build_forecaster,
)
from rnn_pipeline.train import fit, setup_torch


def make(arch="segment", norm="revin", channels="mixed", n_features=5, n_targets=3, horizon=7, window=10, **kw):
    torch.manual_seed(0)
    return build_forecaster(ForecasterSpec(cell=kw.pop("cell", "gru"), hidden=16, layers=kw.pop("layers", 1),
                                      dropout=0.0, n_features=n_features, n_targets=n_targets, horizon=horizon,
                                      architecture=arch, norm=norm, channels=channels, segment=kw.pop("segment", 4),
                                      window=window, **kw)).eval()


@pytest.mark.parametrize("arch,norm,channels,cell", [
    *itertools.product(ARCHITECTURES, NORMS, CHANNEL_MODES, ["gru"]),
    ("segment", "revin", "independent", "lstm"), ("direct", "last", "independent", "lstm"),
    ("segment", "none", "mixed", "rnn_tanh")])
def test_every_combination_gives_batch_by_horizon_by_targets(arch, norm, channels, cell):
    m = make(arch, norm, channels, cell=cell, layers=2)
    assert isinstance(m, {"direct": DirectForecaster, "segment": SegmentForecaster}[arch])
    x = torch.randn(6, 10, 5)
    assert m(x).shape == (6, 7, 3)
    assert m(x[:1]).shape == (1, 7, 3)  # a single window too
    if arch == "direct" and norm == "none":  # every step's forecast (loss_steps='all')
        assert m(x, all_steps=True).shape == (6, 10, 7, 3)
    else:
        with pytest.raises(ValueError, match="all_steps"):
            m(x, all_steps=True)


@pytest.mark.parametrize("length,segment,horizon", [(10, 4, 7), (12, 4, 8), (5, 8, 3), (96, 24, 96)])
def test_segment_model_takes_any_window_and_horizon(length, segment, horizon):
    m = make("segment", "last", n_features=2, n_targets=1, horizon=horizon, segment=segment, window=length)
    assert m(torch.randn(3, length, 2)).shape == (3, horizon, 1)
    assert m.n_out == -(-horizon // segment)  # output segments: H rounded up to whole segments


@pytest.mark.parametrize("norm", ["revin", "last"])
@pytest.mark.parametrize("arch,channels", [("segment", "mixed"), ("segment", "independent"),
                                           ("direct", "independent")])
def test_normalisation_restores_each_channels_scale_and_level(norm, arch, channels):
    """f(a x + b) = a f(x) + b per channel: the network sees the same normalised window, and the forecast comes back
    on the window's own scale (revin) or level (last)."""
    m = make(arch, norm, channels, n_features=3, n_targets=2)
    x = torch.randn(4, 10, 3, dtype=torch.float64)
    m = m.double()
    a = torch.tensor([50.0, 4.0, 30.0], dtype=torch.float64) if norm == "revin" else torch.ones(3, dtype=torch.float64)
    b = torch.tensor([1000.0, -7.0, 0.5], dtype=torch.float64)
    with torch.no_grad():
        y, y_shifted = m(x), m(a * x + b)
    torch.testing.assert_close(y_shifted, a[:2] * y + b[:2], rtol=1e-4, atol=1e-4)  # up to revin's eps


def test_revin_of_a_silent_network_forecasts_the_window_mean_and_last_the_last_value():
    x = torch.randn(4, 10, 3) * 5 + 20
    for norm, expected in (("revin", x.mean(1, keepdim=True)[..., :2]), ("last", x[:, -1:, :2])):
        m = make("direct", norm, "mixed", n_features=3, n_targets=2)
        with torch.no_grad():
            m.head.weight.zero_()
            m.head.bias.zero_()
            y = m(x)
        torch.testing.assert_close(y, expected.expand(-1, 7, -1), rtol=1e-5, atol=1e-4)


def test_revin_affine_is_learnable_and_still_inverts():
    m = make("segment", "revin", "mixed", affine=True)
    names = dict(m.named_parameters())
    assert "norm.weight" in names and "norm.bias" in names
    z, stats = m.norm.normalise(torch.randn(2, 10, 5))
    with torch.no_grad():
        m.norm.weight.mul_(3.0)
        m.norm.bias.add_(0.5)
    x = torch.randn(2, 10, 5)
    z, stats = m.norm.normalise(x)
    torch.testing.assert_close(m.norm.restore(z[:, :4, :3], stats, 3), x[:, :4, :3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("norm", NORMS)
def test_a_forecast_reads_only_its_own_window(arch, norm):
    """No statistic crosses windows: changing one window of a batch changes no other window's forecast."""
    m = make(arch, norm, "independent")
    x = torch.randn(5, 10, 5)
    x2 = x.clone()
    x2[2] = x2[2] * 10 + 3
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(y[keep], y2[keep])
    assert not torch.allclose(y[2], y2[2])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_independent_channels_share_one_network_on_a_three_channel_series(arch):
    """Channel-independent mode: a target's forecast depends on its own history (and the features), not on the
    other targets', and without channel embeddings the same network serves every channel."""
    m = make(arch, "revin", "independent", n_features=3, n_targets=3, channel_embedding=False)
    x = torch.randn(4, 10, 3)
    with torch.no_grad():
        y = m(x)
        other = x.clone()
        other[..., 1:] = torch.randn(4, 10, 2) * 4
        torch.testing.assert_close(m(other)[..., 0], y[..., 0])  # channel 0 ignores channels 1 and 2
        perm = [2, 0, 1]
        torch.testing.assert_close(m(x[..., perm]), y[..., perm])  # one shared network: permuting permutes
        solo = make(arch, "revin", "independent", n_features=1, n_targets=1, channel_embedding=False)
        solo.load_state_dict(m.state_dict())
        torch.testing.assert_close(solo(x[..., 1:2])[..., 0], y[..., 1])
    with_ids = make(arch, "revin", "independent", n_features=3, n_targets=3)
    assert with_ids.n_channel_ids == 3
    with torch.no_grad():  # with channel embeddings, the channels may differ
        assert not torch.allclose(with_ids(x[..., perm]), with_ids(x)[..., perm])


def test_independent_mode_uses_the_features():
    m = make("segment", "revin", "independent", n_features=4, n_targets=2)
    assert m.c_in == 3  # own history + 2 features
    x = torch.randn(3, 10, 4)
    x2 = x.clone()
    x2[..., 3] += torch.randn(3, 10)
    with torch.no_grad():
        assert not torch.allclose(m(x), m(x2))


def test_highway_adds_a_linear_forecast():
    m = make("segment", "last", "mixed", highway=True)
    assert m.highway.in_features == 10 * 5 and m.highway.out_features == 7 * 3
    with pytest.raises(ValueError, match="window"):
        make("segment", "last", "mixed", highway=True, window=0)


def _linear_windows(n=400, window=12, horizon=3, n_features=3, seed=0):
    """Windows of a noisy multi-channel random walk with a daily cycle: (N, L, F) inputs, (N, H, F) targets."""
    rng = np.random.default_rng(seed)
    t = np.arange(n + window + horizon)[:, None]
    series = np.cumsum(rng.standard_normal((len(t), n_features)), 0) + 3 * np.sin(2 * np.pi * t / 24)
    seq = np.lib.stride_tricks.sliding_window_view(series, window + horizon, axis=0).transpose(0, 2, 1)
    seq = torch.tensor(seq, dtype=torch.float32)
    return seq[:, :window], seq[:, window:]


@pytest.mark.parametrize("norm", NORMS)
def test_a_mixed_linear_start_is_the_ridge_on_every_columns_normalised_lags(norm):
    """Started from its highway, the model forecasts exactly what sklearn's Ridge fitted on the normalised windows
    (every column's lags -> every target's H values) forecasts: the core adds nothing until it trains."""
    from sklearn.linear_model import RidgeCV

    x, y = _linear_windows()
    m = make("segment", norm, "mixed", n_features=3, n_targets=3, horizon=3, window=12, highway=True)
    alpha = m.start_from_linear(x, y, alphas=(0.1, 10.0))
    z, stats = m.norm.normalise(x)
    target = m.norm.to_network(y, stats, 3)
    ridge = RidgeCV(alphas=[0.1, 10.0]).fit(z.reshape(len(z), -1).double(), target.reshape(len(z), -1).double())
    assert alpha == ridge.alpha_
    expected = m.norm.restore(torch.tensor(ridge.predict(z.reshape(len(z), -1).double()), dtype=torch.float32)
                              .reshape(y.shape), stats, 3)
    with torch.no_grad():
        assert torch.allclose(m(x), expected, atol=1e-3)
    assert not m.highway.weight.requires_grad  # the start stays; the recurrent part learns the rest


def test_an_independent_linear_start_is_one_ridge_shared_by_every_channel():
    """Channel-independent: one linear map of a channel's own (last-value-normalised) history, shared by all
    channels (NLinear's 'shared' form), fitted on every channel's windows stacked."""
    from sklearn.linear_model import RidgeCV

    x, y = _linear_windows(n_features=3)
    m = make("direct", "last", "independent", n_features=3, n_targets=3, horizon=3, window=12, highway=True)
    m.start_from_linear(x, y, alphas=(1.0,))
    last = x[:, -1:, :]
    rows_x = (x - last).transpose(1, 2).reshape(-1, 12)  # window b, channel j -> row b * 3 + j
    rows_y = (y - last).transpose(1, 2).reshape(-1, 3)
    ridge = RidgeCV(alphas=[1.0]).fit(rows_x.double(), rows_y.double())
    pred = torch.tensor(ridge.predict(rows_x.double()), dtype=torch.float32).reshape(len(x), 3, 3).transpose(1, 2)
    with torch.no_grad():
        assert torch.allclose(m(x), pred + last, atol=1e-3)


def test_training_from_a_linear_start_never_ends_below_it_on_validation():
    """fit() scores the linear start as epoch 0: the model it returns is at least as good on validation (here a
    learning rate far too high wrecks every epoch, so the start itself comes back, highway untouched)."""
    from rnn_pipeline.forecasting.windows import WindowSet

    x, y = _linear_windows(n=600, n_features=2)
    series = torch.cat([x[:, 0], x[-1, 1:]], 0)  # the underlying (n, F) series again
    idx = np.arange(12, len(series) - 3 + 1)
    train, val = (WindowSet(series, 2, 12, 3, part) for part in (idx[:400], idx[400:]))
    spec = ForecasterSpec(cell="gru", hidden=8, layers=1, dropout=0.0, n_features=2, n_targets=2, horizon=3,
                          architecture="segment", norm="last", channels="mixed", segment=4, highway=True, window=12)
    wrecked = fit(spec, train, val, lr=5.0, batch_size=32, max_epochs=3, patience=5, clip_grad_norm=None)
    assert wrecked.best_epoch == 0
    start = build_forecaster(spec)
    start.start_from_linear(*train.batch())
    assert wrecked.best_val == pytest.approx(val.eval_loss(start), rel=1e-4)
    assert torch.equal(wrecked.model.highway.weight, start.highway.weight)
    good = fit(spec, train, val, lr=1e-3, batch_size=32, max_epochs=3, patience=5)
    assert good.best_val <= wrecked.best_val + 1e-9


def _three_channel_series(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    base = np.sin(2 * np.pi * t / 24)
    cols = {f"c{j}": (j + 1) * 10 * base + 100 * j + 0.1 * rng.standard_normal(n) for j in range(3)}
    return pd.Series(t), pd.DataFrame(cols)


@pytest.mark.parametrize("arch,norm,channels", [("segment", "revin", "independent"), ("segment", "last", "mixed"),
                                                ("direct", "revin", "independent")])
def test_each_model_learns_a_three_channel_series_and_round_trips(tmp_path, arch, norm, channels):
    time, values = _three_channel_series()
    data = prepare_series(time, values, "s", ["c0", "c1", "c2"], [], window=48, max_window=48, horizon=12,
                          scaler="standard", val=0.15, test=0.15)
    setup_torch(1, 0)
    spec = ForecasterSpec(cell="gru", hidden=16, layers=1, dropout=0.0, n_features=3, n_targets=3, horizon=12,
                     architecture=arch, norm=norm, channels=channels, segment=12)
    res = fit(spec, data.windows("train", 48, "mae"), data.windows("val", 48), lr=5e-3, batch_size=32, max_epochs=6,
              patience=6, seed=0)
    assert res.best_val < 0.1  # standardised scale: the clean daily cycle is learned (persistence scores ~1)
    bundle = ForecastBundle(res.model, data.scaling, ["c0", "c1", "c2"], [], 48, 12)
    files = bundle.save(tmp_path)
    again = load_bundle(files["preprocess"], files["weights"])
    assert again.model.spec == spec
    x = np.stack([values.to_numpy()[i:i + 48] for i in (100, 700)])
    np.testing.assert_allclose(again.predict_windows(x), bundle.predict_windows(x), rtol=1e-6)


def test_a_model_registered_before_these_options_still_loads(tmp_path):
    """preprocess.json of older versions has no architecture/norm/channels: it is a direct, unnormalised, mixed
    model with the state-dict keys rnn.* and head.*."""
    old = {"cell": "gru", "hidden": 4, "layers": 1, "dropout": 0.0, "n_features": 1, "n_targets": 1, "horizon": 2}
    m = build_forecaster(ForecasterSpec(**old))
    assert isinstance(m, DirectForecaster) and m.spec.norm == "none" and m.spec.channels == "mixed"
    assert sorted(m.state_dict()) == ["head.bias", "head.weight", "rnn.bias_hh_l0", "rnn.bias_ih_l0",
                                      "rnn.weight_hh_l0", "rnn.weight_ih_l0"]
    bundle = ForecastBundle(m, Scaling(np.zeros(1), np.ones(1)), ["v"], [], 5, 2)
    files = bundle.save(tmp_path)
    assert load_bundle(files["preprocess"], files["weights"]).predict_windows(np.ones((1, 5, 1))).shape == (1, 2, 1)



@pytest.mark.parametrize("arch,norm", [("direct", "none"), ("segment", "revin")])
def test_an_ensemble_forecasts_the_mean_of_its_members_and_round_trips(tmp_path, arch, norm):
    members = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        members.append(build_forecaster(ForecasterSpec(cell="gru", hidden=8, layers=1, dropout=0.0, n_features=2,
                                                        n_targets=1, horizon=3, architecture=arch, norm=norm,
                                                        segment=4, window=12)).eval())
    assert ensemble_of(members[:1]) is members[0]
    ens = ensemble_of(members)
    assert isinstance(ens, ForecastEnsemble) and len(ens.spec.members) == 3 and ens.spec.members[0].hidden == 8
    assert ens.spec.weights == pytest.approx([1 / 3] * 3)
    x = torch.randn(5, 12, 2)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in members]).mean(0)
        assert not torch.allclose(members[0](x), members[1](x))  # the members differ
        torch.testing.assert_close(ens(x), expected)
    bundle = ForecastBundle(ens, Scaling(np.zeros(2), np.ones(2)), ["v"], ["f"], 12, 3)
    files = bundle.save(tmp_path)
    again = load_bundle(files["preprocess"], files["weights"])
    assert isinstance(again.model, ForecastEnsemble) and again.model.spec == ens.spec
    np.testing.assert_allclose(again.predict_windows(x.numpy()), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_a_seed_ensemble_saved_before_mixed_ensembles_still_loads_as_the_mean(tmp_path):
    """Models registered with `members: 3` in their spec (one shape, equal weights) load as they forecast then."""
    spec = ForecasterSpec(cell="gru", hidden=8, layers=1, dropout=0.0, n_features=1, n_targets=1, horizon=2,
                          window=6, members=3)
    torch.manual_seed(0)
    old = build_forecaster(spec).eval()
    assert isinstance(old, ForecastEnsemble) and len(old.members) == 3
    from rnn_pipeline.bundle import save_files

    meta = {"format": 1, "task": "forecasting", "model": spec.to_json(),
            "scaling": Scaling(np.zeros(1), np.ones(1)).to_json(), "target_columns": ["v"], "feature_columns": [],
            "window": 6, "horizon": 2}
    files = save_files(tmp_path, meta, old)
    again = load_bundle(files["preprocess"], files["weights"])
    x = torch.randn(4, 6, 1)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in old.members]).mean(0)
    np.testing.assert_allclose(again.predict_windows(x.numpy()), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_an_ensemble_of_different_shapes_and_windows_weighs_each_member_on_its_own_window(tmp_path):
    a = make(arch="direct", norm="none", n_features=2, n_targets=1, horizon=3, window=12)
    b = make(arch="segment", norm="last", n_features=2, n_targets=1, horizon=3, window=24, segment=6,
             highway=True)
    c = make(arch="segment", norm="revin", channels="independent", n_features=2, n_targets=1, horizon=3, window=6,
             segment=3)
    ens = ensemble_of([a, b, c], [0.5, 0.25, 0.25])
    assert ens.spec.window == 24 and [m.window for m in ens.spec.members] == [12, 24, 6]
    x = torch.randn(5, 24, 2)
    with torch.no_grad():
        expected = 0.5 * a(x[:, -12:]) + 0.25 * b(x) + 0.25 * c(x[:, -6:])
        torch.testing.assert_close(ens(x), expected)
    assert ensemble_of([a, b], [1.0, 0.0]) is a  # a member of weight 0 is left out
    nested = ensemble_of([ens, a], [0.5, 0.5])  # an ensemble among the models is flattened into its members
    assert len(nested.members) == 4 and sum(nested.spec.weights) == pytest.approx(1.0)
    with torch.no_grad():
        torch.testing.assert_close(nested(x), 0.5 * expected + 0.5 * a(x[:, -12:]))
    bundle = ForecastBundle(ens, Scaling(np.zeros(2), np.ones(2)), ["v"], ["f"], 24, 3)
    files = bundle.save(tmp_path)
    again = load_bundle(files["preprocess"], files["weights"])
    assert isinstance(again.model, ForecastEnsemble) and again.model.spec == ens.spec
    np.testing.assert_allclose(again.predict_windows(x.numpy()), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_greedy_selection_mixes_models_whose_errors_cancel_and_keeps_one_that_needs_no_help():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(400, 3))
    noise = rng.normal(size=(400, 3))
    over, under = y + 0.5 + 0.1 * noise, y - 0.5 + 0.1 * rng.normal(size=(400, 3))  # biased the opposite ways
    poor = y + 2.0
    counts = greedy_selection([poor, over, under], y)
    assert counts[0] == 0 and counts[1] >= 1 and counts[2] >= 1 and abs(counts[1] - counts[2]) <= 1
    mix = (counts[1] * over + counts[2] * under) / (counts[1] + counts[2])
    assert np.mean((mix - y) ** 2) < 0.1 * min(np.mean((over - y) ** 2), np.mean((under - y) ** 2))
    exact = y + 0.01 * noise  # the best alone beats every mix: nothing is added to it
    assert greedy_selection([over, exact, under], y) == [0, 1, 0]


def _seed_task(training: dict):
    """The seed config with a small direct model and these training settings: (config, task, prepared data)."""
    from rnn_pipeline import tasks
    from rnn_pipeline.config import load_config
    from rnn_pipeline.data import datasets

    cfg = load_config("seed_sine", {"training": training, "model": {"architecture": "direct", "hidden": 8}})
    t = tasks.for_config(cfg)
    frame, source = datasets.load(cfg.data.builtin, None, cfg.base_dir)
    return cfg, t, t.prepare(t.read(frame, source), source)


def test_the_final_fit_averages_fits_with_successive_seeds():
    from rnn_pipeline import tune

    cfg, t, data = _seed_task({"ensemble": 3, "max_epochs": 4, "patience": 4})
    params = tune.default_params(cfg)
    setup_torch(1, cfg.seed)
    res = tune.fit_final(params, data, cfg, device="cpu")
    assert isinstance(res.model, ForecastEnsemble) and len(res.model.members) == 3
    val = t.train_sets(params, data)[1]
    member_vals = [val.eval_loss(m) for m in res.model.members]
    assert len(set(member_vals)) == 3  # seeds seed, seed+1, seed+2: three different fits
    assert res.best_val == pytest.approx(val.eval_loss(res.model))
    assert res.best_val <= np.mean(member_vals) + 1e-9  # the mean forecast never scores worse than the average member
    assert res.epochs == 12 and len(res.history) == 4
    # a single member is exactly the plain fit with the config's seed
    one = tune.fit_final(params, data, cfg.model_copy(update={"training": cfg.training.model_copy(update={"ensemble": 1})}),
                         device="cpu")
    assert isinstance(one.model, DirectForecaster)
    assert val.eval_loss(one.model) == pytest.approx(member_vals[0], rel=1e-6)


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match="architecture 'transformer'"):
        ForecasterSpec(cell="gru", hidden=4, layers=1, dropout=0.0, n_features=1, n_targets=1, horizon=1,
                  architecture="transformer")


def test_the_summary_says_when_the_model_is_only_its_linear_start():
    from rnn_pipeline.tasks import summary_head

    s = {"model_name": "m", "model_version": "1", "promoted": True, "reason": "r", "champion_version": "1",
         "best_params": {}, "n_trials": 1, "n_pruned": 0, "n_failed": 0, "resumed_trials": 0}
    assert not any("linear start" in line for line in summary_head({**s, "final_fit": {"best_epoch": 3}}))
    assert any("no epoch beat the linear start" in line for line in summary_head({**s, "final_fit": {"best_epoch": 0}}))


def test_a_direct_model_with_a_highway_trains_on_the_last_step_under_loss_steps_all():
    """loss_steps 'all' trains every step's forecast of a direct model on raw inputs; with a highway (which maps whole
    windows) it falls back to the last step's forecast instead of failing the trial."""
    from rnn_pipeline.forecasting.windows import WindowSet

    x, _ = _linear_windows(n=200, n_features=1)
    series = torch.cat([x[:, 0], x[-1, 1:]], 0)
    idx = np.arange(12, len(series) - 3 + 1)
    train, val = WindowSet(series, 1, 12, 3, idx[:150]), WindowSet(series, 1, 12, 3, idx[150:])
    spec = ForecasterSpec(cell="gru", hidden=8, layers=1, dropout=0.0, n_features=1, n_targets=1, horizon=3,
                          architecture="direct", norm="none", highway=True, window=12)
    assert not build_forecaster(spec).supports_all_steps
    res = fit(spec, train, val, lr=1e-3, batch_size=32, max_epochs=2, patience=5, loss_steps="all")
    assert np.isfinite(res.best_val)
    assert build_forecaster(ForecasterSpec(**{**spec.to_json(), "highway": False})).supports_all_steps


def test_the_final_model_mixes_the_candidates_by_their_validation_forecasts():
    from rnn_pipeline import tune

    cfg, t, data = _seed_task({"ensemble": 1, "max_epochs": 3, "patience": 3})
    base = tune.default_params(cfg)
    # two near-equal linear-started models on different look-backs: their errors partly cancel on validation
    candidates = [{**base, "architecture": "segment", "segment": 5, "norm": "none", "highway": True, "window": 20},
                  {**base, "architecture": "segment", "segment": 5, "norm": "last", "highway": True, "window": 40}]
    setup_torch(1, cfg.seed)
    res = tune.fit_final(candidates, data, cfg, device="cpu")
    assert [m["params"] for m in res.members] == candidates
    weights = [m["weight"] for m in res.members]
    assert sum(weights) == pytest.approx(1.0) and all(w >= 0 for w in weights)
    val = data.windows("val", 40)  # every candidate is judged on the windows the longest look-back allows
    assert res.best_val == pytest.approx(val.eval_loss(res.model), rel=1e-6)
    assert all(w > 0 for w in weights)  # the mix beats either alone on validation
    assert isinstance(res.model, ForecastEnsemble) and res.model.spec.window == 40
    assert res.best_val < min(val.eval_loss(_Tail(m)) for m in res.model.members)
    assert t.bundle(res.model, data, candidates[0]).window == 40  # the best member's params say 20


@pytest.mark.parametrize("arch,norm,channels,highway", [("direct", "none", "mixed", True),
                                                        ("segment", "revin", "independent", False),
                                                        ("segment", "last", "mixed", True)])
def test_a_forecaster_given_a_longer_history_reads_only_its_own_look_back(arch, norm, channels, highway):
    m = make(arch, norm, channels, window=10, highway=highway)
    x = torch.randn(4, 25, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x[:, -10:]))
        assert not torch.allclose(m(x), m(x[:, -11:-1]))  # the last ten steps, not any ten


def test_a_candidate_kept_alone_is_judged_and_bundled_at_its_own_look_back():
    """When validation keeps one candidate alone and another read a longer look-back, the lone model is scored on
    the longer windows' last L steps (with a highway, reading the whole longer window failed the run) and its
    bundle asks for its own L, not the best trial's."""
    from rnn_pipeline import tune

    cfg, t, data = _seed_task({"max_epochs": 1, "patience": 1})
    base = tune.default_params(cfg)
    short = {**base, "architecture": "segment", "segment": 5, "norm": "none", "highway": True, "window": 20}
    long = {**short, "window": 40}
    setup_torch(1, cfg.seed)
    good = build_forecaster(t.spec(short, data))
    x, y = data.windows("train", 20).batch(torch.arange(len(data.windows("train", 20))))
    good.start_from_linear(x, y)  # the linear forecast: close to the noise floor on the sine
    poor = build_forecaster(t.spec(long, data))  # untrained: far off
    model, weights, best_val = t.combine([good.eval(), poor.eval()], data)
    assert weights == [1.0, 0.0] and model is good
    assert best_val == pytest.approx(data.windows("val", 40).eval_loss(_Tail(good)), rel=1e-6)
    assert t.bundle(model, data, long).window == 20


class _Tail(torch.nn.Module):
    """A model reading the last `spec.window` steps of longer windows, as an ensemble member does."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x[:, -self.model.spec.window:])


def test_top_params_are_the_best_distinct_complete_trials_over_the_defaults():
    import optuna

    from rnn_pipeline import tune
    from rnn_pipeline.config import load_config

    cfg = load_config("seed_sine")
    study = optuna.create_study()
    for value, hidden, state in [(0.3, 16, "COMPLETE"), (0.1, 32, "COMPLETE"), (0.1, 32, "COMPLETE"),
                                 (0.05, 64, "PRUNED"), (0.2, 48, "COMPLETE"), (float("nan"), 8, "FAIL")]:
        trial = optuna.trial.create_trial(params={"hidden": hidden},
                                          distributions={"hidden": optuna.distributions.IntDistribution(8, 64)},
                                          value=None if state != "COMPLETE" else value,
                                          state=getattr(optuna.trial.TrialState, state))
        study.add_trial(trial)
    top = tune.top_params(study, cfg, 3)
    assert [p["hidden"] for p in top] == [32, 48, 16]  # the duplicate, the pruned and the failed trial left out
    assert top[0] == {**tune.default_params(cfg), "hidden": 32}
    assert [p["hidden"] for p in tune.top_params(study, cfg, 1)] == [32]
    assert tune.top_params(None, cfg, 3) == [tune.default_params(cfg)]


def test_a_runner_up_whose_refit_fails_is_left_out_and_the_best_ones_failure_is_an_error(monkeypatch):
    from rnn_pipeline import tune
    from rnn_pipeline.train import TrainingDiverged

    cfg, _, data = _seed_task({"max_epochs": 2, "patience": 2})
    base = tune.default_params(cfg)
    candidates = [base, {**base, "hidden": 12}, {**base, "hidden": 16}]
    real = tune.fit_model

    def diverging(params, *a, **kw):
        if params["hidden"] == 12:
            raise TrainingDiverged("loss is not finite at epoch 1")
        return real(params, *a, **kw)

    monkeypatch.setattr(tune, "fit_model", diverging)
    res = tune.fit_final(candidates, data, cfg, device="cpu")
    assert [m["params"]["hidden"] for m in res.members] == [8, 16]
    with pytest.raises(TrainingDiverged):
        tune.fit_final(candidates[1:], data, cfg, device="cpu")


def test_top_params_take_the_best_of_each_model_family_before_the_next_best_of_one():
    import optuna

    from rnn_pipeline import tune
    from rnn_pipeline.config import load_config

    cfg = load_config("seed_sine")
    study = optuna.create_study()
    dist = {"norm": optuna.distributions.CategoricalDistribution(["last", "revin", "none"]),
            "highway": optuna.distributions.CategoricalDistribution([False, True]),
            "hidden": optuna.distributions.IntDistribution(8, 256)}
    for value, norm, highway, hidden in [(0.50, "last", True, 256), (0.51, "last", True, 128),
                                         (0.52, "last", True, 64), (0.55, "none", True, 256),
                                         (0.53, "revin", False, 256), (0.60, "none", True, 64)]:
        study.add_trial(optuna.trial.create_trial(params={"norm": norm, "highway": highway, "hidden": hidden},
                                                  distributions=dist, value=value))
    top = tune.top_params(study, cfg, 3)
    # the best, then the best of the two other families (by value), not the best family's runners-up
    assert [(p["norm"], p["hidden"]) for p in top] == [("last", 256), ("revin", 256), ("none", 256)]
    top = tune.top_params(study, cfg, 5)  # families exhausted: then the next best
    assert [(p["norm"], p["hidden"]) for p in top] == [("last", 256), ("last", 128), ("last", 64), ("revin", 256),
                                                       ("none", 256)]
