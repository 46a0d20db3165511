"""Federation on Flower's real engines: accuracy, privacy, robustness, bad clients, versions, deployment."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from federation.runner import SuperLink, flwr_run, run_app
from federation.settings import FederationSettings
from sdk.errors import ConfigError
from tests.federation.attackers import write_app

pytestmark = pytest.mark.slow

JOIN = [sys.executable, "-m", "sdk.cli", "edge", "join", "--superlink"]
FEDERATE = [sys.executable, "-m", "sdk.cli", "federate", "--engine", "deployment", "--clients", "3", "--rounds", "2"]
FEDERATE += ["--json", "--timeout", "300"]


@pytest.fixture(scope="module")
def link():
    """One simulation SuperLink for the module; every test submits its own run."""
    with SuperLink(simulation=True) as running:
        yield running


@pytest.fixture(scope="module")
def attack_app(tmp_path_factory):
    """The test-only app whose run config can turn one client into an attacker."""
    return write_app(tmp_path_factory.mktemp("attack-app"))


def simulate(link: SuperLink, **values) -> dict:
    settings = FederationSettings.from_run_config(values)
    return run_app(link.home, settings, num_supernodes=settings.num_clients, timeout_s=600)


def attacked(link: SuperLink, app: Path, attack: str, partition: int, **values) -> dict:
    """A run of Fedge's round in which the client of ``partition`` sends what ``attack`` makes of its update."""
    settings = FederationSettings.from_run_config(values)
    report_path = link.home / f"attacked-{time.time_ns()}.json"
    run_config = {**settings.to_run_config(), "report-path": str(report_path)}
    run_config.update({"attack": attack, "attack-partition": partition})
    return flwr_run(link.home, app, run_config, report_path, num_supernodes=settings.num_clients, timeout_s=600)


def audit(directory: Path, who: str) -> dict[int, set[str]]:
    """Digests of the updates that clients sent (who="client") or the server strategy saw, by round."""
    found: dict[int, set[str]] = {}
    for path in directory.glob(f"{who}-round-*.json"):
        round_no = int(path.stem.split("-")[2])
        data = json.loads(path.read_text())
        found.setdefault(round_no, set()).update(data if isinstance(data, list) else [data])
    return found


def test_ten_non_iid_clients_get_within_three_points_of_centralised_training(link, digits_split):
    from federation.task import DigitsCNN, evaluate, set_seed, train

    report = simulate(link, **{"num-clients": 10, "clients-per-round": 10, "num-server-rounds": 10, "alpha": 0.5})
    set_seed(0)
    central = DigitsCNN()
    # The same budget: as many passes over the training data as each client made over its share.
    train(central, digits_split.x_train, digits_split.y_train, epochs=10 * 5, lr=0.01, batch_size=16)
    _, central_accuracy = evaluate(central, digits_split.x_test, digits_split.y_test)
    assert len(report["rounds"]) == 10
    assert report["test_accuracy"] >= central_accuracy - 0.03, (report["test_accuracy"], central_accuracy)


def test_secagg_dp_reaches_its_stated_accuracy_and_the_server_never_sees_a_plain_update(link, tmp_path):
    report = simulate(
        link,
        **{
            "num-clients": 5,
            "clients-per-round": 5,
            "num-server-rounds": 8,
            "privacy": "secagg+dp",
            "noise-multiplier": 0.05,
            "clipping-norm": 2.0,
            "audit-dir": str(tmp_path),
        },
    )
    epsilons = [r["epsilon"] for r in report["rounds"]]
    assert len(epsilons) == 8
    assert all(a < b for a, b in itertools.pairwise(epsilons))
    accountant = FederationSettings(privacy="dp", noise_multiplier=0.05).privacy_mode.accountant(
        FederationSettings(privacy="dp", noise_multiplier=0.05)
    )
    for _ in range(8):
        expected = accountant.spend()
    assert report["epsilon"] == pytest.approx(expected, rel=1e-3)
    assert report["test_accuracy"] >= 0.75  # the accuracy the README states for this setting

    clients, server = audit(tmp_path, "client"), audit(tmp_path, "server")
    assert set(server) == set(clients) == set(range(1, 9))
    for round_no, seen in server.items():
        assert len(seen) == 1  # every result the strategy got carries the one unmasked aggregate
        assert not seen & clients[round_no]  # and it is none of the clients' own updates


def test_a_poisoned_client_is_contained_by_robust_aggregation(link, attack_app, tmp_path):
    common = {"num-clients": 5, "clients-per-round": 5, "num-server-rounds": 5}
    clean = simulate(link, **common, **{"audit-dir": str(tmp_path)})
    poisoned = attacked(link, attack_app, "scale", 0, **common)
    robust = attacked(link, attack_app, "scale", 0, **common, robust="trimmed-mean")
    accuracy = {name: r["test_accuracy"] for name, r in (("clean", clean), ("poisoned", poisoned), ("robust", robust))}
    assert accuracy["robust"] >= accuracy["clean"] - 0.02, accuracy
    assert accuracy["poisoned"] <= accuracy["clean"] - 0.10, accuracy
    # Without secure aggregation the server does see each client's own update (the contrast to the test above).
    assert audit(tmp_path, "server")[1] == audit(tmp_path, "client")[1]


@pytest.mark.parametrize("attack", ["nan", "wrong-shape"])
def test_unusable_updates_are_dropped_and_never_reach_the_model(link, attack_app, attack):
    report = attacked(link, attack_app, attack, 1, **{"num-clients": 3, "clients-per-round": 3, "num-server-rounds": 2})
    assert [r["dropped"] for r in report["rounds"]] == [1, 1]
    assert [r["clients"] for r in report["rounds"]] == [2, 2]
    assert np.isfinite(report["rounds"][-1]["val_loss"])
    assert report["test_accuracy"] > 0.5


def test_a_silent_client_does_not_hold_the_round(link, attack_app):
    # The timeout is many honest rounds long (a loaded machine still fits one in it, cold engine included);
    # the silent client sleeps two timeouts in round 1, so only the timeout can close that round.
    report = attacked(
        link,
        attack_app,
        "hang",
        2,
        **{"num-clients": 3, "clients-per-round": 3, "num-server-rounds": 2, "round-timeout-s": 60.0},
    )
    assert len(report["rounds"]) == 2
    assert report["rounds"][0]["clients"] == 2  # both honest clients, closed by the timeout without the silent one
    assert report["rounds"][1]["clients"] >= 2
    assert report["test_accuracy"] > 0.5


def test_the_privacy_budget_stops_the_run_before_it_is_overspent(link):
    values = {"num-clients": 3, "clients-per-round": 3, "num-server-rounds": 5, "noise-multiplier": 1.0}
    settings = FederationSettings.from_run_config({**values, "privacy": "dp"})
    accountant = settings.privacy_mode.accountant(settings)
    accountant.spend()
    accountant.spend()
    budget = accountant.epsilon + 1e-6  # room for exactly two rounds
    report = simulate(link, **values, **{"epsilon-budget": budget}, privacy="dp")
    assert len(report["rounds"]) == 2
    assert "privacy budget exhausted" in report["stopped"]
    assert report["epsilon"] <= budget + 1e-4  # the report rounds to 4 decimals


def test_accepted_rounds_become_versions_with_lineage(link, tmp_path):
    from sdk.edge import EdgeRuntime

    report = simulate(
        link,
        **{"num-clients": 3, "clients-per-round": 3, "num-server-rounds": 3, "versions-dir": str(tmp_path)},
        **{"baseline-accuracy": 0.5},
    )
    accepted = [r for r in report["rounds"] if "candidate_version" in r]
    assert accepted, report["rounds"]
    accuracies = [r["val_accuracy"] for r in accepted]
    assert all(a > 0.5 for a in accuracies)
    assert accuracies == sorted(accuracies)  # each candidate beat the one before
    newest = max(tmp_path.glob("digits-v*"), key=lambda p: int(p.name.rsplit("v", 1)[1]))
    with EdgeRuntime.from_model_dir(newest) as rt:
        lineage = rt.manifest.lineage
        assert rt.manifest.version == accepted[-1]["candidate_version"]
    assert lineage["round"] == accepted[-1]["round"]
    assert lineage["privacy"] == "none"
    assert lineage["run_id"] == str(report["run_id"])


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"privacy": "secagg", "robust": "median"}, "run-config.robust"),
        ({"num-clients": 3, "clients-per-round": 4}, "run-config.clients-per-round"),
        ({"privacy": "sometimes"}, "run-config.privacy"),
        ({"strategy": "fedadam", "robust": "krum", "num-clients": 6, "clients-per-round": 6}, "robust"),
        ({"threshold-target": 0.95}, "run-config.threshold-cloud-model-dir"),
        ({"threshold-target": 1.5, "threshold-cloud-model-dir": "cloud"}, "run-config.threshold-target"),
    ],
)
def test_invalid_run_config_is_refused_before_any_node_is_contacted(values, key):
    from federation.strategy import build_strategy

    with pytest.raises(ConfigError) as info:
        build_strategy(FederationSettings.from_run_config(values), [])
    assert info.value.key.endswith(key.split(".")[-1])


def test_cli_refuses_a_bad_config_without_starting_flower(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sdk.cli", "federate", "--privacy", "secagg", "--robust", "median"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "run-config.robust" in proc.stderr + proc.stdout


def test_deployment_engine_with_three_supernode_processes(tmp_path):
    from sdk.edge import EdgeRuntime

    with SuperLink(simulation=False) as superlink:
        nodes = [
            subprocess.Popen(
                [*JOIN, superlink.address, "--partition-id", str(k), "--num-partitions", "3"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for k in range(3)
        ]
        try:
            proc = subprocess.run(
                [*FEDERATE, "--superlink", superlink.address, "--versions-dir", str(tmp_path)],
                capture_output=True,
                text=True,
                timeout=360,
            )
        finally:
            for node in nodes:
                node.terminate()
            for node in nodes:
                node.wait(30)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert len(report["rounds"]) == 2
    assert all(r["clients"] == 3 for r in report["rounds"])
    version_dir = next(tmp_path.glob("digits-v*"))
    with EdgeRuntime.from_model_dir(version_dir) as rt:
        assert rt.predict(np.zeros((1, 8, 8), np.float32)).source == "edge"


def test_under_secagg_a_client_never_sends_a_non_finite_update(link, attack_app):
    # The server cannot see inside the masked sum, so the client-side guard refuses to send;
    # SecAgg+ treats the refusal as a dropout and unmasks the others' sum.
    values = {"num-clients": 4, "clients-per-round": 4, "num-server-rounds": 2, "privacy": "secagg"}
    report = attacked(link, attack_app, "nan", 1, **values)
    assert [r["clients"] for r in report["rounds"]] == [3, 3]
    assert report["test_accuracy"] > 0.5
