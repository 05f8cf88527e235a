"""The one emitter: every operation sends a river_event; a failing receiver never fails the request."""

from __future__ import annotations

import json

from django_river_ml import events
from flavored_models import examples, make_model


def test_operations_emit_json_events_and_broken_receivers_are_counted(river_client):
    received = []

    def record(sender, event, data, **kwargs):
        received.append((event, data))

    def broken(sender, event, data, **kwargs):
        raise RuntimeError("receiver down")

    events.river_event.connect(record)
    events.river_event.connect(broken)
    dropped_before = events.dropped
    try:
        name = river_client.upload_model(make_model("binary"), "binary", "evented")
        x, y = examples("binary", 1)[0]
        river_client.learn(name, x, ground_truth=y)
        identifier = river_client.predict(name, x)["identifier"]
        river_client.label(y, identifier, name)
        river_client.delete_model(name)
    finally:
        events.river_event.disconnect(record)
        events.river_event.disconnect(broken)

    assert [event for event, _ in received] == ["upload", "learn", "predict", "label", "delete"]
    assert all(data["model"] == "evented" for _, data in received)
    predict = dict(received)["predict"]
    assert predict["features"] == x and set(predict["prediction"]) == {True, False}
    for _, data in received:
        json.dumps(data, allow_nan=False)  # plain JSON values only
    assert events.dropped == dropped_before + 5
