"""Read-only items that many data sets share, and cheap editable copies of them.

Items that many data sets share (the SR writer's prototypes: concept names, finding sites, the
Present/Absent items...) are encoded once: :func:`read_only` makes an item unchangeable (its
elements, values, sequences, nested items and length flag; any change raises ``TypeError``), so
its bytes are kept with it and reused wherever it appears. A copy made with ``copy.deepcopy`` (or
pickled) is an ordinary, editable item again.

Most of an SR's own items are such prototypes with a few values of the report's (a NUM item and
its probability), and making them as pydicom objects cost more than encoding them. So
:func:`editable_copy` makes an editable copy that shares the prototype's elements until they are
reached through the data set, and :class:`LazyCopy` a copy that is made only when reached (items
in a sequence held as a tuple); until then the encoder writes them from the prototype's kept
bytes and the new values, exactly as it would write the copies themselves.

The encoder (:mod:`.encode`) reads these classes' internals: it keeps a read-only item's bytes
and writes an editable copy's unreached elements from them. Both rest on pydicom 3.0's data
model (``Dataset._dict``, ``DataElement._value``), which is why pyproject pins pydicom < 3.1.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from copy import deepcopy
from functools import cache
from typing import Any, NamedTuple, NoReturn, TypeVar

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import ConstrainedList
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import PersonName

__all__ = [
    "DeferredCopy",
    "Entries",
    "LazyCopy",
    "copy_value",
    "editable_copy",
    "lazy_sequence",
    "read_only",
    "sequence_entries",
]

_D = TypeVar("_D", bound=Dataset)

_READ_ONLY = (
    "read-only: this item is shared with other data sets (DICOM SR prototypes); "
    "copy.deepcopy the data set to change it"
)
#: Values that cannot change in place (DS/IS numbers, UIDs, dates and names included).
_IMMUTABLE = (str, int, float, bytes, PersonName, datetime.date, datetime.time, type(None))
#: Where a read-only element keeps its bytes (per codec), in its instance dict.
_BYTES = "_encoded_bytes"


def _refuse(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError(_READ_ONLY)


def _thawed(obj: Any, memo: dict[int, Any], cls: type) -> Any:
    """A deep copy of a read-only ``obj`` as an editable ``cls``: what deepcopy and pickle give."""
    plain = cls.__new__(cls)
    memo[id(obj)] = plain
    state = {name: value for name, value in vars(obj).items() if name != _BYTES}
    plain.__dict__.update(deepcopy(state, memo))
    return plain


def _deepcopy_editable(self: Any, memo: dict[int, Any]) -> Any:
    return _thawed(self, memo, self._editable)


def _reduce_editable(self: Any, protocol: Any) -> Any:
    return _unpickled, (deepcopy(self),)  # pickled as its editable deep copy


def _unpickled(editable: Any) -> Any:
    return editable


class _ReadOnlyElements(dict):  # type: ignore[type-arg]
    """The element dict of a read-only item; with the item's bytes (per codec of the parent's
    character set), the names of its dict attributes (for copies) and how its lazy copies are
    encoded (:func:`_plan`)."""

    __slots__ = ("dicts", "encoded", "plans")
    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __init__(self, item: Dataset) -> None:
        super().__init__(item._dict)
        self.encoded: dict[str, bytes] = {}
        self.plans: dict[tuple[tuple[BaseTag, ...], str], Any] = {}
        self.dicts = tuple(
            name for name, value in vars(item).items() if type(value) is dict and name != "_dict"
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[Any, Any]:
        return {tag: deepcopy(element, memo) for tag, element in self.items()}

    __reduce_ex__ = _reduce_editable


class _ReadOnlyElement(DataElement):
    """A data element whose value, VR and flags cannot be set (its bytes are kept)."""

    __setattr__ = __delattr__ = _refuse
    __reduce_ex__ = _reduce_editable

    def __deepcopy__(self, memo: dict[int, Any]) -> DataElement:
        return _thawed(self, memo, DataElement)  # type: ignore[no-any-return]


#: What makes a multi-value or sequence class read-only (MutableSequence's other methods call
#: these), an item class (its length flag: its parents' bytes depend on it), and either
#: editable again when deep-copied or pickled.
_LIST_CHANGES: dict[str, Any] = dict.fromkeys(
    ("append", "extend", "insert", "sort", "reverse", "__setitem__", "__delitem__", "__iadd__"),
    _refuse,
)
_LIST_CHANGES["__iter__"] = lambda self: iter(self._list)  # not a generator: faster
_ITEM_CHANGES = {"is_undefined_length_sequence_item": property(lambda self: False, _refuse)}
_THAW = {"__deepcopy__": _deepcopy_editable, "__reduce_ex__": _reduce_editable}


@cache
def _read_only_class(cls: type) -> type:
    """The read-only subclass of a Dataset, MultiValue or Sequence class (same name: the
    reprs do not change); its ``_editable`` is ``cls``."""
    changes = _ITEM_CHANGES if issubclass(cls, Dataset) else _LIST_CHANGES
    namespace = {**changes, **_THAW, "_editable": cls, "__module__": cls.__module__}
    return type(cls.__name__, (cls,), namespace)


def read_only(item: _D) -> _D:
    """Make ``item`` and everything in it read-only, in place, so that :func:`encode` may keep
    its bytes; returns ``item``.

    For items shared by many data sets. Values must be immutable (text, numbers, UIDs, dates,
    names) or lists of them, or sequences (whose items become read-only too); anything else
    raises ``TypeError``, and an item that is already read-only is left as it is.
    """
    elements = item._dict
    if isinstance(elements, _ReadOnlyElements):
        return item
    if type(elements) is not dict or item.is_undefined_length_sequence_item:
        raise TypeError(f"cannot make this {type(item).__name__} read-only")
    for tag, element in elements.items():
        if isinstance(element, _ReadOnlyElement):  # also in another read-only item
            continue
        if type(element) is not DataElement:
            raise TypeError(f"cannot make the {type(element).__name__} {Tag(tag)} read-only")
        value = element.value
        if isinstance(value, ConstrainedList):
            for nested in value if isinstance(value, Sequence) else ():
                read_only(nested)
            if not hasattr(value, "_editable"):
                value.__class__ = _read_only_class(type(value))
        elif not isinstance(value, _IMMUTABLE):
            raise TypeError(f"cannot make the {type(value).__name__} value of {Tag(tag)} read-only")
        element.__class__ = _ReadOnlyElement
        element.__dict__[_BYTES] = {}
    object.__setattr__(item, "_dict", _ReadOnlyElements(item))
    object.__setattr__(item, "__class__", _read_only_class(type(item)))
    return item


class LazyCopy(NamedTuple):
    """``editable_copy(item, values)``, made only when reached: an item of a tuple that is the
    value of a sequence in ``values`` (the sequence is made, with its copies, when reached)."""

    item: Dataset
    values: Mapping[BaseTag, Any]

    def make(self) -> Dataset:
        return editable_copy(self.item, self.values)


class DeferredCopy(NamedTuple):
    """An item of a sequence's tuple like :class:`LazyCopy`, for a writer that knows its bytes
    without working out its values: ``encoded(codec)`` gives them (the encoder calls it), and
    ``build()`` the item, when it is reached. The two must agree; the writer's tests hold them
    to it."""

    build: Callable[[], Dataset]
    encoded: Callable[[str], bytes]

    def make(self) -> Dataset:
        return self.build()


#: The entries of a sequence's tuple that are made when reached.
_LAZY_ENTRIES = (LazyCopy, DeferredCopy)
#: A sequence's items as a copy holds them: items, and the copies to make when reached.
Entries = tuple[Dataset | LazyCopy | DeferredCopy, ...]


class _LazySequence(NamedTuple):
    """A sequence element of an editable copy, made when reached: ``element`` gives its tag, VR
    and flags, ``entries`` its items (items, or LazyCopy and DeferredCopy for the copies to
    make)."""

    element: DataElement
    entries: Entries

    def make(self) -> DataElement:
        items = [e.make() if type(e) in _LAZY_ENTRIES else e for e in self.entries]
        return _element_like(self.element, Sequence(items))


class _SharedElements(dict):  # type: ignore[type-arg]
    """The element dict of an editable copy of a read-only item: it holds the read-only
    elements, and the sequences still to make, until they are reached through the data set
    (``ds.Keyword``, ``ds[tag]``, ``ds.get``, iterating...), which then gets editable elements
    of its own (a sequence: a new pydicom Sequence of the same read-only items). The copy
    behaves as an item of its own, and the encoder, which reads the dict as a plain dict,
    meets the read-only elements (their kept bytes) and the sequences to make (their recipe)."""

    __slots__ = ()

    def __getitem__(self, tag: Any) -> Any:
        element = dict.__getitem__(self, tag)
        kind = type(element)
        if kind is _ReadOnlyElement:
            element = _owned(element)
        elif kind is _LazySequence:
            element = element.make()
        else:
            return element
        dict.__setitem__(self, tag, element)
        return element

    def get(self, tag: Any, default: Any = None) -> Any:
        return self[tag] if tag in self else default  # noqa: SIM401 (this is get)

    def values(self) -> Any:
        self._own_all()
        return dict.values(self)

    def items(self) -> Any:
        self._own_all()
        return dict.items(self)

    def pop(self, tag: Any, *default: Any) -> Any:
        if tag in self:
            self[tag]
        return dict.pop(self, tag, *default)

    def popitem(self) -> Any:
        self._own_all()
        return dict.popitem(self)

    def _own_all(self) -> None:
        for tag, element in list(dict.items(self)):
            if type(element) is _ReadOnlyElement or type(element) is _LazySequence:
                self[tag]


def lazy_sequence(dataset: Dataset, tag: BaseTag, entries: Entries) -> None:
    """Set the sequence at ``tag`` of ``dataset`` (a plain data set, or an editable copy) to
    ``entries``, made when reached as an editable copy's sequences are; until then the encoder
    writes them without making them."""
    elements = dataset._dict
    if type(elements) is dict:
        elements = _SharedElements(elements)
        object.__setattr__(dataset, "_dict", elements)
    elif type(elements) is not _SharedElements:
        raise TypeError(f"cannot hold a lazy sequence in a {type(elements).__name__}")
    template = DataElement(tag, "SQ", Sequence(), already_converted=True)
    dict.__setitem__(elements, tag, _LazySequence(template, entries))


def sequence_entries(dataset: Dataset, tag: BaseTag) -> Entries:
    """The items of the sequence at ``tag`` (none where absent), those still to make as they
    are (LazyCopy, DeferredCopy): to add to them without making them."""
    element = dict.get(dataset._dict, tag)  # type: ignore[call-overload]
    if element is None:
        return ()
    if type(element) is _LazySequence:
        return element.entries  # type: ignore[no-any-return]
    return tuple(dataset[tag].value)


def _owned(element: DataElement) -> DataElement:
    """An editable copy of a read-only element: a new list of the same values or items."""
    value = element.value
    if isinstance(value, Sequence):
        value = Sequence(value)
    elif isinstance(value, ConstrainedList):
        editable = type(value)._editable.__new__(type(value)._editable)  # type: ignore[attr-defined]
        editable.__dict__.update(value.__dict__)
        editable._list = list(value._list)
        value = editable
    return _element_like(element, value)


def _element_like(element: DataElement, value: Any) -> DataElement:
    """A new, editable element like ``element`` (tag, VR, flags) holding ``value``."""
    new = DataElement.__new__(DataElement)
    state = new.__dict__
    state.update(element.__dict__)
    state.pop(_BYTES, None)
    state["_value"] = value
    return new


def _template(shared: Mapping[Any, DataElement], tag: BaseTag) -> DataElement:
    """The read-only item's element at ``tag``, or a new, empty one of the dictionary's VR."""
    element = dict.get(shared, tag)  # type: ignore[call-overload]
    if element is None:
        element = DataElement(tag, dictionary_VR(tag), None, already_converted=True)
    return element  # type: ignore[no-any-return]


def copy_value(item: Dataset, element: DataElement) -> Any:
    """The value at ``element``'s tag of a copy of the read-only ``item`` (``LazyCopy(item,
    values)``) that holds ``element`` (a sequence's items as a tuple). A copy's value takes the
    VR and length flag of the item's element there (the dictionary's where it has none), so
    ValueError where those are not ``element``'s: the copy would not hold it as it is."""
    template = _template(item._dict, element.tag)
    if (element.VR, element.is_undefined_length) != (template.VR, template.is_undefined_length):
        raise ValueError(f"{element.keyword or element.tag} is not as the item holds it")
    return tuple(element.value) if element.VR == "SQ" else element.value


def editable_copy(item: _D, values: Mapping[BaseTag, Any], *, own_all: bool = False) -> _D:
    """An editable copy of the read-only ``item`` holding ``values`` (by tag, already converted
    as pydicom converts them, a sequence as a tuple of items, LazyCopy and DeferredCopy) in
    place of its own.

    Cheap, as no constructor runs and no value is converted again. The copy behaves as an item
    of its own, whose elements and sequences can change (not the items in them), but it shares
    ``item``'s read-only elements, and makes the sequences in ``values``, only when they are
    reached (:class:`_SharedElements`); with ``own_all``, at once, in a plain dict (for a data
    set at the top). Its other state is ``item``'s, with its own copy of every dict in it.
    """
    shared = item._dict
    if not isinstance(shared, _ReadOnlyElements):
        raise TypeError("editable_copy copies read-only items")
    elements = _SharedElements(shared)
    for tag, value in values.items():
        template = _template(shared, tag)
        if type(value) is not tuple:
            element = _element_like(template, value)
        elif template.VR == "SQ":
            element = _LazySequence(template, value)
        else:
            raise TypeError(f"a tuple is a sequence's items, not a {template.VR} value")
        dict.__setitem__(elements, template.tag, element)
    cls = type(item)._editable  # type: ignore[attr-defined]
    new = cls.__new__(cls)
    state = new.__dict__
    state.update(item.__dict__)
    for name in shared.dicts:
        state[name] = state[name].copy()
    if own_all:
        elements._own_all()
        elements = dict(elements)  # type: ignore[assignment]
    state["_dict"] = elements
    return new  # type: ignore[no-any-return]
