"""The worker's memory of recent request ids: bounded in count, time and answer size."""

from sdk.cloud.recent import RecentRequests


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_new_then_in_flight_then_answered_with_its_bytes():
    recent = RecentRequests()
    assert recent.claim("a") == ("new", None)
    assert recent.claim("a") == ("in_flight", None)
    recent.answered("a", b"reply")
    assert recent.claim("a") == ("answered", b"reply")


def test_the_oldest_keys_go_first_past_the_capacity():
    recent = RecentRequests(capacity=2)
    for key in "abc":
        recent.claim(key)
    assert len(recent) == 2
    assert recent.claim("a") == ("new", None)


def test_keys_expire_after_their_time():
    clock = Clock()
    recent = RecentRequests(ttl_s=10.0, clock=clock)
    recent.claim("a")
    clock.now = 9.9
    assert recent.claim("a")[0] == "in_flight"
    clock.now = 10.0
    assert recent.claim("a") == ("new", None)


def test_a_large_answer_is_not_kept_and_a_repeat_computes_it_again():
    recent = RecentRequests(max_answer_bytes=4)
    recent.claim("a")
    recent.answered("a", b"12345")
    assert recent.claim("a") == ("new", None)
