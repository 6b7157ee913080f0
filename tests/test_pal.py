"""Phaseless alignment learning (rule = "pal", SPEC 3.9) in Brian2: the noise, B's rule, the replay in numpy.

Expected values come from the closed forms of research/gait_pal_di.md B
(the discrete OU variance and autocovariance, the Hebbian constant ``c`` of a
one-step pipeline, B's geometric decay without noise), written in
`arsim.reference.pal`, and from its step-by-step numpy replay of a run,
which shares no code with the rule or the C++.
"""

import dataclasses

import numpy as np
import pytest
from brian2 import Equations

from arsim import metrics
from arsim.brian.devices import get_runner, parameter_sizes
from arsim.brian.network import topology_for
from arsim.cli import main
from arsim.config import ConfigError, resolve
from arsim.reference.pal import hebbian_constant, ou_covariance, ou_variance
from arsim.relax import draw_problem, network_params
from arsim.spec import Experiment
from arsim.training import BrianTrainer, init_params
from conftest import training_data

E = Experiment.from_config
SIZES = [5, 4, 3, 2]
N_SAMPLES, BATCH = 12, 4


def _config(**keys):
    base = {"sizes": SIZES, "activation": "tanh", "output_activation": "tanh", "bias": True, "init_std": 0.6,
            "feedback_std": 0.4, "duration": 30.0, "train.batch_size": BATCH, "train.lr": 0.05, "train.align_every": 0,
            "rule": "pal", "pal.sigma": 0.5, "pal.eta_b": 5.0, "pal.alpha": 0.1}
    return resolve({**base, **keys})


def _recording_run(config, start, x, targets, seed, device="cpp", n_samples=N_SAMPLES):
    """One training run with monitors on the noise: ``(W, b, B, noise)`` as Brian2 computed and drew them."""
    experiment = E(config)
    trainer = BrianTrainer(experiment, n_samples, device=device)
    topo = dataclasses.replace(trainer.topology, record_variables=("x", "noise"), record_every=1)
    runner = get_runner(topo, device)
    raw = runner.run(trainer.params_for_run(start, x, targets, seed=seed))
    sizes = config["sizes"]
    W = [raw[f"proj{l}.w"].reshape(sizes[l + 1], sizes[l]) for l in range(len(sizes) - 1)]
    b = [raw[f"layer{l + 1}.b"][:sizes[l + 1]] for l in range(len(sizes) - 1)]
    B = experiment.rule.backward_from_results(raw, W, start.B)
    noise = {l: raw[f"monitor{l}.noise"] for l in range(1, len(sizes) - 1)}
    return W, b, B, noise


@pytest.mark.parametrize("parallel,device", [("batch", "cpp"), ("sample", "cpp"), ("batch", "runtime")])
def test_brian_training_replays_in_numpy_with_the_noise_it_drew(parallel, device, build_dir):
    config = _config(**{"train.parallel": parallel})
    x, targets = training_data(config, N_SAMPLES)
    start = init_params(E(config))
    W, b, B, noise = _recording_run(config, start, x, targets, seed=11, device=device)
    rule = E(config).rule
    reference = rule.reference_epoch(E(config), start, x, targets, noise=noise)
    for name, brian, numpy in (("W", W, reference.W), ("b", b, reference.b), ("B", B, reference.B)):
        assert max(float(np.max(np.abs(u - v))) for u, v in zip(brian, numpy)) < 1e-10, name
    # the comparison can fail: without the noise the reference's B is far from Brian2's
    quiet = E(config).replace(**{"pal.sigma": 0.0})
    silent = quiet.rule.reference_epoch(quiet, start, x, targets)
    assert max(float(np.max(np.abs(u - v))) for u, v in zip(B[1:], silent.B[1:])) > 1e-3
    assert float(np.std(noise[1])) > 0.1


def test_a_run_is_reproducible_bit_for_bit_and_the_seed_changes_the_noise(build_dir):
    config = _config()
    x, targets = training_data(config, N_SAMPLES)
    start = init_params(E(config))
    first = _recording_run(config, start, x, targets, seed=3)
    again = _recording_run(config, start, x, targets, seed=3)
    other = _recording_run(config, start, x, targets, seed=4)
    for l in (1, 2):
        np.testing.assert_array_equal(first[3][l], again[3][l])
        np.testing.assert_array_equal(first[2][l], again[2][l])
        assert np.max(np.abs(first[3][l] - other[3][l])) > 0.1
    # arsim train seeds every run from (seed, epoch, first batch)
    trainer = BrianTrainer(E(config), N_SAMPLES)
    one = trainer.run_chunk(start, x, targets, first_batch=0, epoch=1).params
    two = trainer.run_chunk(start, x, targets, first_batch=0, epoch=1).params
    three = trainer.run_chunk(start, x, targets, first_batch=0, epoch=2).params
    np.testing.assert_array_equal(one.B[1], two.B[1])
    assert np.max(np.abs(one.B[1] - three.B[1])) > 1e-6


def test_sigma_zero_compiles_without_noise_and_every_positive_sigma_shares_one_build():
    def topology(sigma):
        return topology_for(E(_config(**{"pal.sigma": sigma})))

    noisy, louder, quiet = topology(0.5), topology(2.0), topology(0.0)
    assert noisy == louder and noisy != quiet
    assert Equations(noisy.make_rule().neuron_terms()).stochastic_variables == {"xi"} and noisy.make_rule().stochastic
    assert not Equations(quiet.make_rule().neuron_terms()).stochastic_variables and not quiet.make_rule().stochastic
    # the noiseless build takes no seed
    assert any(key.endswith("noise_seed") for key in parameter_sizes(noisy))
    assert not any(key.endswith("noise_seed") for key in parameter_sizes(quiet))


def test_without_noise_B_decays_exactly_geometrically_while_W_learns(build_dir):
    config = _config(**{"pal.sigma": 0.0, "pal.eta_b": 0.5, "pal.alpha": 0.02})
    x, targets = training_data(config, N_SAMPLES)
    start = init_params(E(config))
    trainer = BrianTrainer(E(config), N_SAMPLES)
    trained = trainer.run_chunk(start, x, targets).params
    steps = trainer.topology.n_steps  # B steps on every clock step of the run
    factor = (1.0 - config["dt"] * 0.5 * 0.02) ** steps
    for l in (1, 2):
        np.testing.assert_allclose(trained.B[l], factor * start.B[l], rtol=1e-12, atol=0)
    np.testing.assert_array_equal(trained.B[0], start.B[0])  # B^0 feeds the input: not used, not learned
    assert max(float(np.max(np.abs(u - v))) for u, v in zip(trained.W, start.W)) > 1e-3
    assert factor < 0.5  # the test can fail: B moved far


def test_ou_noise_has_the_discrete_stationary_variance_and_autocovariance(build_dir):
    steps = 20000
    config = resolve({"sizes": [3, 50, 2], "rule": "pal", "duration": float(steps), "pal.sigma": 0.2,
                      "record.variables": ["x", "noise"]})
    experiment = E(config)
    topo = topology_for(experiment)
    raw = get_runner(topo).run(network_params(topo, experiment.network, draw_problem(experiment), rule=experiment.rule))
    xi = raw["monitor1.noise"][200:]  # from 0 at the first step: the transient decays like 0.9^n
    a = config["dt"] / config["pal.tau_xi"]
    v = ou_variance(0.2, a)
    # 1e6 values, about 10 steps per independent one: a standard error near 0.5 % of v
    assert abs(xi.var() / v - 1) < 0.02
    for lag in (1, 5, 20):
        assert abs(np.mean(xi[lag:] * xi[:-lag]) - ou_covariance(0.2, a, lag)) < 0.02 * v, lag
    assert abs(v - 0.2**2 / 2) > 0.04 * v  # the continuous variance sigma^2 / 2 is outside the tolerance
    assert not np.any(raw["monitor2.noise"])  # no noise at the output


def test_linear_chain_with_fixed_W_learns_c_W_transpose_with_the_one_step_pipeline(build_dir):
    """``E[noise^l rhat^{l+1}^T] = c W^l^T`` with ``c`` of a one-step delay; with ``alpha = 0`` B integrates it."""
    sigma, eta_b, periods = 1.0, 0.01, 200
    config = resolve({"sizes": [4, 6, 5, 3], "activation": "linear", "init_std": 0.4, "rule": "pal", "pal.sigma": sigma,
                      "pal.eta_b": eta_b, "pal.alpha": 0.0, "train.batch_size": 64, "train.lr": 0.0, "duration": 100.0})
    experiment = E(config)
    x, targets = training_data(config, 64 * periods)
    start = init_params(experiment)
    trainer = BrianTrainer(experiment, 64 * periods)
    trained = trainer.run_chunk(start, x, targets).params
    a = b = config["dt"] / config["pal.tau_xi"]
    c = hebbian_constant(sigma, a, b, delay=1)
    for l in (1, 2):
        np.testing.assert_array_equal(trained.W[l], start.W[l])  # lr = 0
        hebbian = (trained.B[l] - start.B[l]) / (config["dt"] * eta_b * trainer.topology.n_steps)
        target = start.W[l].T
        fitted = float(np.sum(hebbian * target) / np.sum(target * target))
        # 1.3e6 noisy samples: the fitted c within 2 % (0.1 % bias from each run's start at 0); a two-step
        # delay (c 10 % lower) or no delay (11 % higher) would fail
        assert abs(fitted / c - 1) < 0.02, (l, fitted, c)
        assert metrics.angle_deg(hebbian, target) < 5.0
    assert abs(hebbian_constant(sigma, a, b, 0) / c - 1) > 0.1


@pytest.mark.parametrize(
    "keys,named",
    [
        ({"pal.sigma": -0.1}, "pal.sigma"),
        ({"pal.alpha": -1e-4}, "pal.alpha"),
        ({"pal.eta_b": -1.0}, "pal.eta_b"),
        ({"pal.tau_xi": 0.5}, "pal.tau_xi"),
        ({"pal.tau_hp": 0.0}, "pal.tau_hp"),
        ({"rule": "ar", "pal.sigma": 0.1}, "pal.sigma"),
        ({"record.variables": ["x", "noise"], "rule": "ar"}, "record.variables"),
    ],
)
def test_bad_pal_input_is_one_line_naming_the_key(keys, named):
    with pytest.raises(ConfigError) as info:
        resolve({"sizes": [4, 3, 2], "rule": "pal", **keys})
    message = str(info.value)
    assert "\n" not in message and named in message


def test_bad_pal_table_exits_2_and_writes_nothing(tmp_path, capsys):
    model = tmp_path / "m.toml"
    model.write_text('sizes = [64, 8, 10]\nrule = "pal"\n[pal]\nsigma = -1.0\n')
    out = tmp_path / "out"
    assert main(["train", str(model), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pal.sigma" in err[0]
    assert not out.exists()


def test_a_diverging_run_names_its_batches_and_first_layer_without_a_replay(tmp_path, capsys):
    """B's step ``(1 - dt eta_b alpha)`` beyond -1 grows B geometrically: the run ends in NaN, reported in one line."""
    model = tmp_path / "pal.toml"
    model.write_text('sizes = [64, 6, 5, 10]\nrule = "pal"\ninit_std = 0.1\n[pal]\neta_b = 1e5\nalpha = 1e-3\n'
                     '[train]\ndata = "digits"\nepochs = 1\nbatch_size = 16\nlr = 0.01\nmax_samples = 96\n')
    code = main(["train", str(model), "--out", str(tmp_path / "nan"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3, err
    assert len(err) == 1 and "NaN/Inf" in err[0] and "epoch 1, batches 1.." in err[0] and "layer" in err[0], err
    assert "not replayed" in err[0]
    assert not (tmp_path / "nan" / "weights.npz").exists()
