"""The benchmarks still run end to end (figures are not asserted: speed lives in bench/, not tests).

None of them touches the benchmarks' shared MobileNetV2 cache (``bench.mobilenet.default_cache_root``):
the transport benchmarks build a trivial model in a temp dir, and the OTA one gets a private cache root.
"""

import itertools
import time

from bench import fallback, faults, http
from bench.harness import Progress, alternating, balanced_order


def test_fallback_benchmark_produces_its_figures():
    report = fallback.run(rounds=20, warmup=2, step=Progress(time.time()))
    assert report["rtt_ratio_p50"] > 0
    assert report["rounds"] == 20
    assert set(report["meets_targets"]) == {"rtt_ratio_p50", "rtt_ratio_p99"}


def test_http_benchmark_produces_its_figures():
    report = http.run(seconds=0.5, rounds=1, step=Progress(time.time()))
    assert report["predict_rps"] > 0
    assert report["echo_rps"] > 0


def test_faults_benchmark_produces_its_figures():
    report = faults.run(devices=2, seconds=1.0, per_kind=1, step=Progress(time.time()))
    assert report["sigkill_calls"] > 0
    assert report["poisoned_sent"] == len(faults.poisons("fedge/v1/devices/x/replies"))
    assert report["workers_still_serving"] == report["workers"] == 2
    assert report["broker_restart_failure_window_s"] >= 0


def test_ota_benchmark_produces_its_figures(tmp_path):
    from bench import ota

    report = ota.run(devices=3, step=Progress(time.time()), cache_root=tmp_path / "mobilenet-cache")
    assert report["devices"] == 3
    assert report["bytes_per_release_file_ratio"] >= 1.0
    assert report["time_to_all_devices_ratio"] > 0
    assert report["raw_bytes_per_device"] > report["artifact_bytes"]
    assert report["predictions_during_updates"] > 0  # the devices served through a bad and a good release
    assert report["failed_predictions_during_updates"] == 0
    assert report["meets_targets"]["failed_predictions_during_updates"] is True
    assert report["time_to_fleet_s"] >= report["time_to_fleet_soak_s"] == 3.0  # the staged release soaked each stage
    assert [d for d in report["rollout_decisions"] if not d.startswith("hold")] == [
        "start 5%",
        "advance 25%",
        "advance 100%",
        "complete 100%",
    ]
    assert report["recall_s"] > 0  # every device went back to the release before the recalled one


def test_balanced_order_gives_every_name_the_same_mean_position_every_two_rounds():
    names = ["a", "b", "c"]
    orders = [balanced_order(names, r) for r in range(6)]
    assert {tuple(o) for o in orders} == set(itertools.permutations(names))
    for pair in (orders[0:2], orders[2:4], orders[4:6]):
        assert all(sum(o.index(n) for o in pair) == len(names) - 1 for n in names)


def test_alternating_runs_each_phase_once_per_round():
    calls: list[str] = []
    results = alternating({name: lambda name=name: calls.append(name) or name for name in "xyz"}, rounds=4)
    assert results == {name: [name] * 4 for name in "xyz"}
    assert calls[:6] == ["x", "y", "z", "z", "y", "x"]


def test_load_benchmark_produces_its_figures(model_dir):
    from bench import load

    settings = load.Settings(devices=20, seconds=1.0, saturate_seconds=1.0, rate=5.0, threads=1, spin=False)
    report = load.run(settings, Progress(time.time()), model_dir)
    assert report["devices"] == 20
    for phase in ("echo_steady", "workers1_steady", "workers2_steady"):
        assert report["phases"][phase]["sent"] > 0
        assert report["phases"][phase]["answered"] > 0
    assert report["phases"]["workers2_steady"]["sent"] <= 20 * 5 + 20  # each device keeps its own rate
    assert report["capacity_1w_rps"] > 0
    assert report["scaling_2w_over_1w"] > 0
    assert set(report["meets_targets"]) == {"error_rate"}


def test_broker_benchmark_produces_its_figures():
    from bench import broker

    report = broker.run(rounds=10, warmup=1, step=Progress(time.time()))
    assert report["rounds"] == 10
    assert report["tls_ratio_p50"] > 0
    assert report["stock_ratio_p50"] > 0


def test_telemetry_benchmark_produces_its_figures():
    from bench import telemetry

    report = telemetry.run(rounds=50, warmup=5, step=Progress(time.time()))
    assert report["counted_calls"] == 55  # every predict of the counting runtime, warm-up included
    assert report["telemetry_overhead_ratio"] > 0
    assert set(report["meets_targets"]) == {"telemetry_overhead_ratio"}


def test_delta_benchmark_produces_its_figures(model_dir):
    from bench import delta

    report = delta.run(model_dir, step=Progress(time.time()))
    assert 0 < report["patch_bytes"] < report["artifact_bytes"]
    assert report["delta_update_bytes"] < report["full_update_bytes"]
    assert set(report["meets_targets"]) == {"delta_bytes_ratio"}


def test_cascade_benchmark_produces_its_figures(model_dir, cloud_model_dir):
    from bench import cascade

    report = cascade.run(Progress(time.time()), quick=True, model_dir=model_dir, cloud_model_dir=cloud_model_dir)

    for key in ("edge_accuracy", "cloud_accuracy", "cascade_accuracy"):
        assert 0.9 < report[key] <= 1.0, (key, report)
    assert report["cloud_accuracy"] > report["edge_accuracy"]
    assert report["cascade_accuracy"] > report["edge_accuracy"]  # the cloud's answers were used
    assert 0.0 < report["fallback_rate"] < 0.5
    gap = 100 * (report["cloud_accuracy"] - report["cascade_accuracy"])
    assert abs(report["cascade_gap_pt"] - gap) <= 0.02  # from unrounded accuracies
    assert 0.0 <= report["ece_after"] < report["ece_before"] < 0.2
    assert report["calibration_reached"]
    assert report["degraded_rows"] == 0
    assert set(report["meets_targets"]) == {"cascade_gap_pt", "fallback_rate", "ece_after", "cloud_over_edge_pt"}


def test_cascade_benchmark_measures_device_tiers_of_several_seeds_against_one_served_cloud():
    from bench import cascade

    report = cascade.run(Progress(time.time()), quick=True, device_seeds=2)

    first, second = report["seeds"]
    assert (first["seed"], second["seed"]) == (0, 1)
    assert {key: first[key] for key in cascade.SEED_KEYS} == {key: report[key] for key in cascade.SEED_KEYS}
    assert first["meets_all"] == all(report["meets_targets"].values())
    gaps = [first["cascade_gap_pt"], second["cascade_gap_pt"]]
    assert report["mean_cascade_gap_pt"] == round(sum(gaps) / 2, 2)
    assert report["seeds_meeting_all"] == first["meets_all"] + second["meets_all"]
    for row in (first, second):  # one cloud tier: a device tier's gap and edge-over-cloud figures use the same
        assert abs(row["cascade_gap_pt"] - 100 * (report["cloud_accuracy"] - row["cascade_accuracy"])) <= 0.02
