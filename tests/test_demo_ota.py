"""``fedge demo``'s OTA stage end to end: the loop on real processes, as ``make demo`` runs it.

A secured Mosquitto, ``fedge cloud serve`` with the registry, the release service and the rollout
controller, a ``fedge cloud worker``, and four ``fedge edge run`` devices from the shipped examples
(two LiteRT, two ONNX Runtime). The candidate stands in for the federation's: the release's weights as
a new version, uploaded and released staged as the release pipeline ends (the pipeline run by a real
federation has its own tests, tests/federation/test_release_pipeline.py); the bad version is a real
export of a model trained one epoch on 40 images.
"""

from __future__ import annotations

import json
import re

from bench.versions import make_version
from sdk.cli.demo import gather_traces
from sdk.cli.demo_fleet import FLEET, PHASES, badly_trained, ota_stage
from sdk.edge.rollout import bucket
from sdk.registry_client import RegistryClient


def test_the_loop_widens_a_good_release_aborts_and_recalls_a_bad_one_while_every_device_answers(
    tmp_path, model_dir, digits_split
):
    def release_candidate(url: str, key: str) -> int:
        client = RegistryClient(url, key)
        client.upload(make_version(model_dir, tmp_path / "digits-v2", client.latest_version("digits") + 1))
        client.release("digits", 2, staged=True)
        return 2

    def bad(version: int):
        return badly_trained(digits_split, tmp_path / "digits-bad", version)

    run = ota_stage(model_dir, release_candidate, bad, tmp_path / "ota", digits_split.x_test)

    ids = [device_id for device_id, _ in FLEET]
    assert run.fleet == {
        PHASES[0]: dict.fromkeys(ids, 1),
        PHASES[1]: dict.fromkeys(ids, 2),
        PHASES[2]: dict.fromkeys(ids, 2),
    }
    good = run.candidate_rollout
    assert (good["version"], good["baseline"], good["state"]) == (2, 1, "complete")
    news = [(h["action"], h["percent"]) for h in good["history"] if h["action"] != "hold"]
    assert news == [("start", 25), ("advance", 50), ("advance", 100), ("complete", 100)]
    aborted = run.bad_rollout
    assert (aborted["version"], aborted["baseline"], aborted["state"]) == (3, 2, "aborted")
    assert [(h["action"], h["percent"]) for h in aborted["history"] if h["action"] != "hold"] == [
        ("start", 25),
        ("abort", 25),
    ]
    # The bad model's mean confidence is about 0.1 where the candidate's is about 0.98.
    assert re.search(r"max_confidence_drop: 0\.\d+ > 0\.1 on 2 device\(s\)", aborted["reason"]), aborted["reason"]
    first_stage = sorted(d for d in ids if bucket(d, "digits") < 25)
    assert first_stage == ["jetson-lab", "pi-kitchen"]
    for device in run.devices:
        # The first stage ran the bad version until the recall; the others never took it.
        assert device.versions == ((1, 2, 3, 2) if device.device_id in first_stage else (1, 2)), device
        assert device.errors == 0, device  # from its first install on, every sample answered
        assert all(n > 0 for n in device.per_phase), device  # answers in every phase, through every swap
        assert sum(device.per_phase) == device.answers + device.errors + device.before_install  # each sample once
    assert {(d.example, d.target) for d in run.devices} == {("raspberrypi", "tflite"), ("jetson", "onnx-fp32")}
    # The report's timeline: when each device began serving each version, and the rollouts' moments.
    for device in run.devices:
        assert len(device.swapped_at) == len(device.versions), device
        assert list(device.swapped_at) == sorted(device.swapped_at), device
        assert run.started_at <= device.swapped_at[0], device
        assert device.swapped_at[-1] <= run.finished_at, device
    moments = [what for _, what in run.milestones]
    assert moments[0] == "v1 released"
    assert moments[-2:] == ["v3 staged", "v3 aborted, recalled"]
    recall = run.milestones[-1][0]
    for device in run.devices:
        if device.device_id in first_stage:  # back on v2 after the abort, not before
            assert device.swapped_at[-1] >= recall - 0.001, (device, recall)  # log stamps are to the millisecond
    # Every process wrote its spans (FEDGE_TELEMETRY__TRACE_FILE); the demo gathers them into one trace file.
    trace = gather_traces(tmp_path / "ota")
    assert trace is not None
    spans = [json.loads(line) for line in trace.read_text().splitlines()]
    services = {s["resource"]["attributes"]["service.name"] for s in spans}
    assert services == {"fedge-device", "fedge-worker", "fedge-cloud"}
    predicts = {s["context"]["span_id"]: s for s in spans if s["name"] == "predict"}
    fallbacks = [s for s in spans if s["name"].startswith("process ") and s["parent_id"] in predicts]
    assert fallbacks  # a device's fallback continued, in the worker process, the trace its predict span opened
    for span in fallbacks:
        parent = predicts[span["parent_id"]]
        assert parent["context"]["trace_id"] == span["context"]["trace_id"]
        assert parent["attributes"]["fedge.cloud_rows"] > 0
