"""Job records kept small in memory: what differs per record in a tuple, the rest shared.

A store of a million job records holds a million dicts of the same dozen field names, most
of whose values are the same from record to record (the task, the state, the host, the
runner, ``None`` for the exit code and the error). :func:`pack` keeps a dict of ``str``
keys as one tuple ``(variant, value, ...)``: the :class:`_Variant` holds the field names
and the values every record of it shares; the tuple holds the others, in field order. A
nested dict is packed the same way (one whose values are all shared is the variant's own
tuple: nothing per record); a start time in the ISO form records use is kept as a number
of microseconds (a float: 24 bytes instead of the text's 81), and turned back into the
very same text. :func:`unpack` gives back a dict equal to the one packed, field for field
and in the same order, with values of the same types.

Which fields are shared is learnt from the first two dicts of the same field names: those
whose values were equal (``str``, ``int``, ``bool`` or ``None``, never ``float``: ``0.0``
and ``-0.0`` are equal). A dict whose shared fields hold other values gets a variant of
its own (up to :data:`_VARIANTS` per field names); one that fits none is kept as a plain
copy. Packing is exact or not done: nothing packed ever reads back differently.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from operator import is_, itemgetter
from typing import Any

__all__ = ("pack", "unpack", "is_packed", "copy_value", "field", "maker")

#: the types a value may be shared as (equal values of one of these types are the same value)
_SHAREABLE = frozenset({str, int, bool, type(None), bytes})
_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
#: the most variants kept per field names (records of several outcomes, attempts, hosts)
_VARIANTS = 64
#: the most field names kept (beyond that, a store of free-form values: stop collecting)
_SHAPES = 1024
#: the field whose ISO-8601 text is kept as a number (the only time of a record nothing
#: else in the scheduler holds: its end time is shared with the scheduler's index)
_TIME_FIELD = "start_time"


class _Shape:
    """The dicts of one tuple of field names: which fields are shared, once learnt."""

    __slots__ = (
        "fields",
        "first",
        "shared",
        "shared_at",
        "own",
        "one",
        "names",
        "variants",
        "time_at",
        "full",
        "nested",
        "where",
        "kinds",
        "dicts",
    )

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.fields = fields
        #: the values of the first dict of these fields (until the second one is seen)
        self.first: tuple[Any, ...] | None = None
        #: the values shared by a variant, and the others, as tuples in field order
        self.shared: Any = None
        self.shared_at: tuple[int, ...] = ()
        self.own: Any = None
        #: how many fields are not shared (0, 1 or 2 for more)
        self.one = 0
        #: the names of the fields not shared, in order
        self.names: tuple[str, ...] = ()
        self.variants: dict[tuple[Any, ...], _Variant] = {}
        #: where the start time is among the values not shared (-1: not kept as a number)
        self.time_at = -1
        #: whether no more variants are made
        self.full = False
        #: the shapes of the dicts in each field not shared (a dict of one field of these
        #: records is learnt apart from a dict of the same names in another field)
        self.nested: tuple[dict[tuple[str, ...], _Shape], ...] = ()
        #: ``{name: its place among the values not shared}``
        self.where: dict[str, int] = {}
        #: the types of the values not shared in the second dict (None: not only scalars
        #: and dicts), and where the dicts are among them: a dict of the same types packs
        #: its nested dicts without looking at the other values
        self.kinds: tuple[type, ...] | None = None
        self.dicts: tuple[int, ...] = ()

    def learn(self, first: tuple[Any, ...], second: tuple[Any, ...]) -> None:
        shared_at = [
            i
            for i, (a, b) in enumerate(zip(first, second, strict=True))
            if type(a) in _SHAREABLE and type(a) is type(b) and a == b
        ]
        own_at = [i for i in range(len(self.fields)) if i not in shared_at]
        self.shared = _picker(shared_at)
        self.shared_at = tuple(shared_at)
        self.own = _picker(own_at)
        self.one = min(len(own_at), 2)
        self.names = tuple(self.fields[i] for i in own_at)
        self.nested = tuple({} for _ in own_at)
        self.where = {name: i for i, name in enumerate(self.names)}
        kinds = tuple(type(second[i]) for i in own_at)
        if all(k in _SCALARS or k is dict for k in kinds):
            self.kinds = kinds
            self.dicts = tuple(i for i, k in enumerate(kinds) if k is dict)
        if _TIME_FIELD in self.names:
            at = self.names.index(_TIME_FIELD)
            if _micros(first[own_at[at]]) is not None and _micros(second[own_at[at]]) is not None:
                self.time_at = at
        self.first = None


def _picker(positions: list[int]) -> Any:
    """A function of a tuple that returns the tuple of its items at ``positions`` (one
    item: a tuple of it twice, which :func:`itemgetter` makes quicker than a function
    of ours makes a tuple of one)."""
    if positions:
        return itemgetter(*positions) if len(positions) >= 2 else itemgetter(positions[0], positions[0])
    return lambda values: ()


class _Variant:
    """Field names and the values shared by every dict packed with it."""

    __slots__ = ("shape", "shared", "template", "alone")

    def __init__(self, shape: _Shape, shared: tuple[Any, ...]) -> None:
        self.shape = shape
        self.shared = shared
        # the dict with the shared values in place, the others None (copied, then set)
        kept = dict(zip(shape.shared_at, shared, strict=False))  # (one shared value is there twice)
        self.template = {name: kept.get(i) for i, name in enumerate(shape.fields)}
        #: the packed form of a dict with nothing of its own
        self.alone = (self,)


_shapes: dict[tuple[str, ...], _Shape] = {}


def pack(value: dict[str, Any], shapes: dict[tuple[str, ...], _Shape] = _shapes) -> Any:
    """A packed copy of the JSON-like dict ``value`` (a plain copy when it does not pack).
    ``shapes``: those of the dicts found where this one is (the top level, or a field)."""
    fields = tuple(value)
    shape = shapes.get(fields)
    values = tuple(value.values())
    if shape is None or shape.first is not None:
        return _first(fields, shape, values, shapes)
    shared = shape.shared(values)
    try:
        variant = shape.variants.get(shared)
    except TypeError:  # a dict or list where the first two dicts had the same scalar
        return _plain(value)
    if variant is None or not all(map(is_, shared, variant.shared)):
        variant = _variant(shape, shared, variant)
        if variant is None:
            return _plain(value)
    one = shape.one
    if one == 0:
        return variant.alone
    own = shape.own(values)
    if one == 1:
        v = own[0]
        t = type(v)
        if shape.time_at < 0 and t in _SCALARS:
            return (variant, v)
        own = (v,)
    kinds = tuple(map(type, own))
    if kinds == shape.kinds:
        out = [variant, *own]
        for i in shape.dicts:
            out[i + 1] = pack(own[i], shape.nested[i])
    elif _SCALARS.issuperset(kinds):
        out = [variant, *own]
    else:
        out = [variant]
        for v, nested in zip(own, shape.nested, strict=True):
            t = type(v)
            out.append(v if t in _SCALARS else pack(v, nested) if t is dict else _plain(v))
    at = shape.time_at
    if at >= 0:
        micros = _micros(own[at])
        if micros is None:
            return _plain(value)
        out[at + 1] = micros
    return tuple(out)


def _first(
    fields: tuple[str, ...],
    shape: _Shape | None,
    values: tuple[Any, ...],
    shapes: dict[tuple[str, ...], _Shape],
) -> Any:
    """:func:`pack` of one of the first two dicts of ``fields`` (kept plain)."""
    plain = {k: v if type(v) in _SCALARS else _plain(v) for k, v in zip(fields, values, strict=True)}
    if shape is None:
        for k in fields:
            if type(k) is not str:
                return plain
        if len(shapes) >= _SHAPES:
            return plain
        shape = shapes[fields] = _Shape(fields)
        shape.first = values
    else:
        assert shape.first is not None
        shape.learn(shape.first, values)
    return plain


def _variant(shape: _Shape, shared: tuple[Any, ...], found: _Variant | None) -> _Variant | None:
    """The variant of ``shape`` for the shared values ``shared`` (equal to those of
    ``found``, when given, but not the same objects), or None (none fits)."""
    if found is not None:
        # the same values of other objects: the same variant when of the same types
        if all(type(a) is type(b) for a, b in zip(shared, found.shared, strict=True)):
            return found
        return None
    if shape.full:
        return None
    for v in shared:
        if type(v) not in _SHAREABLE:
            return None  # (a dict where the first two dicts had the same scalar)
    if len(shape.variants) >= _VARIANTS:
        shape.full = True
        return None
    variant = shape.variants[shared] = _Variant(shape, shared)
    return variant


def maker(sample: Any, names: tuple[str, ...]) -> Callable[[tuple[Any, ...]], tuple[Any, ...] | None] | None:
    """For ``sample``, what :func:`pack` made of a dict: a function of the values of its
    fields ``names`` (in that order) that returns what :func:`pack` makes of the same dict
    with those values in place, without the dict (None when one of the values does not
    pack so: the caller packs the dict). None: ``sample`` is not packed, or one of
    ``names`` is a field its records share (the same value in every dict of its variant).

    The values must be scalars (a start time as the text records use, or as the whole
    number of microseconds since the epoch that text stands for) or JSON-like dicts
    (packed as :func:`pack` packs a field's dicts); every other field is the sample's. What this makes reads back exactly as :func:`pack` of the dict would."""
    if not is_packed(sample):
        return None
    variant: _Variant = sample[0]
    shape = variant.shape
    try:
        positions = tuple(shape.where[name] + 1 for name in names)
    except KeyError:
        return None
    if len(set(positions)) != len(positions):
        return None
    timed = shape.time_at + 1 if shape.time_at >= 0 else 0
    at_time = positions.index(timed) if timed in positions else -1
    base = list(sample)
    setters = tuple(zip(positions, range(len(positions)), strict=True))
    nested = tuple(shape.nested[p - 1] for p in positions)

    def make(values: tuple[Any, ...]) -> tuple[Any, ...] | None:
        out = base.copy()
        for position, i in setters:
            v = values[i]
            t = type(v)
            if t is dict:
                v = pack(v, nested[i])
            elif t not in _SCALARS:
                return None
            out[position] = v
        if at_time >= 0:
            v = values[at_time]
            if type(v) is int:  # microseconds since the epoch: the text it stands for
                if not -_LIMIT * 1_000_000 < v < _LIMIT * 1_000_000:
                    return None
                out[timed] = float(v)
            else:
                micros = _micros(v)
                if micros is None:
                    return None
                out[timed] = micros
        return tuple(out)

    return make


def is_packed(value: Any) -> bool:
    """Whether ``value`` is what :func:`pack` made of a dict (and not a plain copy)."""
    return type(value) is tuple and len(value) > 0 and type(value[0]) is _Variant


def unpack(value: tuple[Any, ...]) -> dict[str, Any]:
    """The dict that :func:`pack` packed into ``value`` (see :func:`is_packed`)."""
    variant: _Variant = value[0]
    out = variant.template.copy()
    if len(value) == 1:
        return out
    shape = variant.shape
    at = shape.time_at
    for i, (name, v) in enumerate(zip(shape.names, value[1:], strict=True)):
        t = type(v)
        if i == at:
            out[name] = _text(v)
        elif t in _SCALARS:
            out[name] = v
        elif t is tuple and v and type(v[0]) is _Variant:
            out[name] = unpack(v)
        else:
            out[name] = _plain(v)
    return out


def field(value: tuple[Any, ...], name: str) -> Any:
    """The field ``name`` of the dict packed into ``value`` (None: it has none), as
    :func:`unpack` would give it, without unpacking the rest (the caller must not modify a
    value that is itself a dict or list)."""
    variant: _Variant = value[0]
    shape = variant.shape
    i = shape.where.get(name)
    if i is None:
        return variant.template.get(name)
    v = value[i + 1]
    if i == shape.time_at:
        return _text(v)
    t = type(v)
    return v if t in _SCALARS else copy_value(v)


def copy_value(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, scalars; a packed dict unpacked) as fast
    as plain Python allows; other types go through :func:`copy.deepcopy`."""
    t = type(value)
    if t in _SCALARS:
        return value
    if t is dict:
        out = {}
        for k, v in value.items():
            out[k] = v if type(v) in _SCALARS else copy_value(v)
        return out
    if t is list:
        return [v if type(v) in _SCALARS else copy_value(v) for v in value]
    if t is tuple and value and type(value[0]) is _Variant:
        return unpack(value)
    return copy.deepcopy(value)


_plain = copy_value


# --- start times: "2026-11-23T01:02:03.123456+00:00" <-> 1795395723123456.0 --------
#: the seconds of the texts "YYYY-MM-DDTHH:MM:SS" met, and the texts of those seconds
_seconds: dict[str, int] = {}
_heads: dict[int, str] = {}


def _micros(text: Any) -> float | None:
    """The microseconds since the epoch of the ISO-8601 UTC time ``text`` in the form
    records use, or None (another form, or not a text: kept as it is)."""
    if type(text) is str and len(text) == 32 and text[19] == "." and text.endswith("+00:00"):
        head = text[:19]
        second = _seconds.get(head)
        if second is None:
            second = _second(head)
            if second is None:
                return None
        frac = text[20:26]
        if frac.isdigit() and frac.isascii():
            return second * 1e6 + int(frac)  # (exact: a whole number below 2**53)
    return None


#: the seconds whose microseconds a float holds exactly (below 2**53: up to the year 2255)
_LIMIT = 9_000_000_000


def _second(head: str) -> int | None:
    """The epoch second of the text ``head`` ("YYYY-MM-DDTHH:MM:SS"), or None (not a
    time, or not spelt as :func:`_head` spells it)."""
    import calendar  # (once per second of records: not at the import of the package)
    import datetime

    try:
        parsed = datetime.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    second = calendar.timegm(parsed.timetuple())
    if not -_LIMIT < second < _LIMIT or _head(second) != head:
        return None
    if len(_seconds) >= 4096:
        _seconds.clear()
    _seconds[head] = second
    return second


def _head(second: int) -> str:
    head = _heads.get(second)
    if head is None:
        head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        if len(_heads) >= 4096:
            _heads.clear()
        _heads[second] = head
    return head


def _text(micros: float) -> str:
    """The text :func:`_micros` read ``micros`` from."""
    second, frac = divmod(int(micros), 1_000_000)
    return f"{_head(second)}.{frac:06d}+00:00"
