"""Request/response PUBLISH properties: Fedge packs them itself, to the bytes paho's own class writes."""

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sdk.mqtt import publish_properties


def paho_packed(**fields) -> bytes:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in fields.items():
        setattr(props, name, value)
    return bytes(props.pack())


@pytest.mark.parametrize(
    ("given", "fields"),
    [
        pytest.param({}, {}, id="none"),
        pytest.param({"correlation": b"\x00\xffid"}, {"CorrelationData": b"\x00\xffid"}, id="correlation"),
        pytest.param(
            {"response_topic": "fedge/v1/devices/pi-é/replies", "correlation": b"x" * 300, "expiry_s": 7},
            {
                "ResponseTopic": "fedge/v1/devices/pi-é/replies",
                "CorrelationData": b"x" * 300,
                "MessageExpiryInterval": 7,
            },
            id="all-three",
        ),
        pytest.param({"expiry_s": 0.2}, {"MessageExpiryInterval": 1}, id="expiry-at-least-one-second"),
    ],
)
def test_the_packed_bytes_are_pahos(given, fields):
    assert publish_properties(**given).pack() == paho_packed(**fields)


def test_a_property_set_afterwards_is_packed_by_pahos_own_code():
    props = publish_properties(correlation=b"id")
    props.UserProperty = ("trace", "1")
    assert props.pack() == paho_packed(CorrelationData=b"id", UserProperty=("trace", "1"))
