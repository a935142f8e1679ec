"""record.py: the dataclass behaviour our classes rely on, without dataclasses."""

import pytest

from stunnel3.support.record import FrozenInstanceError, record, replace


@record(frozen=True)
class Point:
    x: int
    y: int = 0
    label: str = "p"


@record
class Box:
    content: bytes
    count: int = 1


def test_fields_come_positionally_by_keyword_and_by_default():
    assert (Point(1).x, Point(1).y, Point(1).label) == (1, 0, "p")
    assert Point(1, 2, "q") == Point(label="q", y=2, x=1)
    assert repr(Point(1, label="a")) == "Point(x=1, y=0, label='a')"
    assert Point.__match_args__ == ("x", "y", "label")


@pytest.mark.parametrize(
    "args, kwargs",
    [((), {}), ((1, 2, "a", 4), {}), ((1,), {"x": 2}), ((1,), {"z": 2})],
)
def test_wrong_arguments_are_type_errors(args, kwargs):
    with pytest.raises(TypeError):
        Point(*args, **kwargs)


def test_equality_is_by_class_and_fields():
    assert Point(1) == Point(1) and Point(1) != Point(2)
    assert Box(b"x") != Point(1)  # another class is never equal

    @record(frozen=True)
    class Other:
        x: int
        y: int = 0
        label: str = "p"

    assert Other(1) != Point(1)


def test_frozen_records_refuse_assignment_and_hash_by_fields():
    point = Point(1)
    with pytest.raises(FrozenInstanceError):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del point.y  # type: ignore[misc]
    assert hash(Point(1, 2)) == hash(Point(1, 2)) and {Point(1), Point(1)} == {Point(1)}


def test_plain_records_change_and_are_not_hashable():
    box = Box(b"a")
    box.count += 1
    assert box == Box(b"a", 2)
    with pytest.raises(TypeError):
        hash(box)


def test_replace_copies_with_changes():
    point = Point(1, 2)
    assert replace(point, label="z") == Point(1, 2, "z") and point.label == "p"
    with pytest.raises(TypeError):
        replace(point, z=1)


def test_a_required_field_after_a_default_is_refused():
    with pytest.raises(TypeError):

        @record
        class Bad:
            a: int = 0
            b: int
