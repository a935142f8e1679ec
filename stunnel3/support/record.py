"""Records: small classes of named fields, as `dataclasses.dataclass` makes them, made cheaply.

    @record(frozen=True)
    class Address:
        host: str | None
        port: int = 25

The fields are the class's annotations, in order, each with its default if it
has one. A record gets `__init__` (positional or keyword arguments),
`__repr__` (`Address(host='x', port=25)`), `__eq__` (same class, equal
fields) and `__match_args__`; a frozen one refuses assignment and is
hashable by its fields, a plain one is not hashable. `replace(record,
**changes)` is a copy with some fields changed. That is all of dataclass
this program uses.

Why not dataclass: it writes each of those methods as source text and
compiles it, for every class at every import; on the direct path, where
every connection starts Python, that was 35 million instructions of about
230 (valgrind --tool=callgrind, our 14 classes). These methods are written
once, here, and read the class's field table.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs every connection its import
    from typing import dataclass_transform
else:

    def dataclass_transform(**kwargs):
        return lambda decorator: decorator


class FrozenInstanceError(AttributeError):
    """An assignment to a field of a frozen record."""


@dataclass_transform()
def record(cls=None, /, *, frozen: bool = False):
    """Make cls a record (see the top); `@record` or `@record(frozen=True)`."""

    def make(cls):
        fields = tuple(
            name
            for name, kind in vars(cls).get("__annotations__", {}).items()
            if not str(kind).startswith(("ClassVar", "typing.ClassVar"))
        )
        defaults = {name: vars(cls)[name] for name in fields if name in vars(cls)}
        for before, name in zip(fields, fields[1:], strict=False):
            if before in defaults and name not in defaults:
                raise TypeError(f"non-default field {name!r} follows a default")
        cls._record_fields, cls._record_defaults = fields, defaults
        cls._record_names = frozenset(fields)
        setattr(cls, "__match_args__", fields)  # noqa: B010  (mypy: a class attribute)
        cls.__init__ = _init
        cls.__repr__ = _repr
        cls.__eq__ = _eq
        cls.__hash__ = _hash if frozen else None
        if frozen:
            cls.__setattr__ = _refuse
            cls.__delattr__ = _refuse
        return cls

    return make if cls is None else make(cls)


def replace(instance, **changes):
    """A copy of a record with `changes` to its fields."""
    values = {name: getattr(instance, name) for name in type(instance)._record_fields}
    unknown = changes.keys() - values.keys()
    if unknown:
        raise TypeError(f"{type(instance).__name__} has no field {sorted(unknown)[0]!r}")
    return type(instance)(**{**values, **changes})


def _init(self, *args, **kwargs) -> None:
    cls = type(self)
    fields = cls._record_fields
    if len(args) > len(fields):
        raise TypeError(f"{cls.__name__}() takes {len(fields)} arguments, {len(args)} given")
    values = dict(zip(fields, args, strict=False))
    for name, value in kwargs.items():
        if name not in cls._record_names:
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {name!r}")
        if name in values:
            raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
        values[name] = value
    put = object.__setattr__
    defaults = cls._record_defaults
    for name in fields:
        if name in values:
            put(self, name, values[name])
        elif name in defaults:
            put(self, name, defaults[name])
        else:
            raise TypeError(f"{cls.__name__}() missing required argument {name!r}")


def _values(self) -> tuple:
    return tuple(getattr(self, name) for name in type(self)._record_fields)


def _repr(self) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self)._record_fields)
    return f"{type(self).__qualname__}({shown})"


def _eq(self, other):
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self) -> int:
    return hash(_values(self))


def _refuse(self, name, *value):
    raise FrozenInstanceError(f"cannot assign to field {name!r}")
