"""Fast DICOM Part 10 encoding of the SR and GSPS objects anaxreport writes.

Why this exists: pydicom's writer costs about 15 µs per data element (ambiguous-VR correction,
character set conversion and a fresh buffer for every element), and an SR of ours holds thousands
of elements in deeply nested sequences, so ``save_as`` took longer than the model itself on the
node/batch hot path. :func:`encode` produces *exactly* the bytes of
``dataset.save_as(buffer, enforce_file_format=True)`` for what our SR and GSPS datasets contain,
in a fraction of the time.

pydicom remains the reference and the fallback: anything this module does not reproduce exactly
(another transfer syntax, Pixel Data, raw elements it may not convert, ambiguous VRs, a Specific
Character Set other than the default, Latin-1 or UTF-8, buffered or numpy values, values too long
for a 16-bit length, LUT descriptors, text that does not encode strictly...) is handed to
pydicom's ``save_as``, which then writes the bytes or raises exactly as it always did. The rules
copied here are those of ``pydicom.filewriter`` (pydicom 3.0): elements in tag order, group length
elements of groups above 0006 dropped, sequences and items of defined length unless the element
or item is flagged as undefined length, text padded to even length with a space (UI: NUL), OB/OW
padded with NUL, UN never padded.

Items that many data sets share (:mod:`.shared`) are encoded once and their bytes kept with
them; an editable copy's elements that were never reached are written from those bytes.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping
from copy import copy
from functools import partial
from io import BufferedIOBase, BytesIO
from typing import Any, Generic, TypeVar

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, PersonName

from .shared import (  # the shared items' internals, which this module encodes
    _BYTES,
    DeferredCopy,
    Entries,
    LazyCopy,
    _LazySequence,
    _ReadOnlyElement,
    _ReadOnlyElements,
    _template,
)

try:  # pydicom treats numpy arrays as multi-valued; we leave them to pydicom
    from numpy import ndarray as _ndarray
except ImportError:  # pragma: no cover - numpy is a dependency of the model
    _ndarray = None

__all__ = [
    "BoundedCache",
    "ItemTemplate",
    "encode",
    "encode_copy",
    "encode_document",
    "encode_item",
    "joined",
]

_log = logging.getLogger(__name__)

#: One value encoder: (value, Python codec of the item's character set, tag) -> padded bytes.
_Encoder = Callable[[Any, str, int], bytes]

_SHORT_HEADER = struct.Struct("<HH2sH").pack  # tag, VR, 16-bit length
_LONG_HEADER = struct.Struct("<HH2s2xI").pack  # tag, VR, 2 reserved bytes, 32-bit length
_TAG = struct.Struct("<HH").pack
_UL = struct.Struct("<I").pack

_UNDEFINED = 0xFFFFFFFF
_ITEM_UNDEFINED = _TAG(0xFFFE, 0xE000) + _UL(_UNDEFINED)
_ITEM_DELIMITER = _TAG(0xFFFE, 0xE00D) + _UL(0)
_SEQUENCE_DELIMITER = _TAG(0xFFFE, 0xE0DD) + _UL(0)
_EXPLICIT_LE = (False, True)  # (implicit VR, little endian) as pydicom spells encodings
_ABSENT = object()
_K = TypeVar("_K")
_V = TypeVar("_V")

_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_LONG_VR_BYTES = frozenset(vr.encode() for vr in _LONG_VRS)
_SHORT_HEADER_SIZE, _LONG_HEADER_SIZE = 8, 12
_LUT_DESCRIPTOR_TAGS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
_MULTI = (MultiValue, list, tuple)
#: Text VRs encoded with the data set's character set (``write_text``, ``CUSTOMIZABLE_CHARSET_VR``
#: less PN); the other text VRs always use pydicom's default encoding.
_CHARSET_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
#: Text VRs with a 16-bit length whose single ``str`` value takes the inlined fast path.
_SHORT_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM"})

#: Python codec of each Specific Character Set we encode; any other value goes to pydicom.
#: Absent, empty and ISO_IR 6 are pydicom's default (``iso8859``, i.e. Latin-1).
_CHARSETS: dict[str | None, str] = {
    None: convert_encodings([default_encoding])[0],
    "": convert_encodings([default_encoding])[0],
    "ISO_IR 6": convert_encodings("ISO_IR 6")[0],
    "ISO_IR 100": convert_encodings("ISO_IR 100")[0],
    "ISO_IR 192": convert_encodings("ISO_IR 192")[0],
}
_DEFAULT_CODEC = _CHARSETS[None]


class _Fallback(Exception):
    """Raised where the fast path cannot promise pydicom's exact bytes."""


def encode(dataset: Dataset) -> bytes:
    """The DICOM file bytes of ``dataset.save_as(buffer, enforce_file_format=True)``.

    Encodes Explicit VR Little Endian datasets directly; anything else (and any value this
    module does not reproduce exactly) falls back to pydicom, so the result is always pydicom's.
    """
    try:
        return _encode_file(dataset)
    except _Fallback as reason:
        _log.debug("fast DICOM encoder falls back to pydicom: %s", reason)
    except Exception as exc:  # any surprise: pydicom decides (its bytes or its error)
        _log.debug("fast DICOM encoder falls back to pydicom: %r", exc)
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _encode_file(dataset: Dataset) -> bytes:
    """Preamble, prefix, file meta and data set, mirroring ``pydicom.filewriter.dcmwrite``."""
    if any(tag >> 16 in (0, 2) for tag in dataset._dict):  # as dcmwrite checks
        raise _Fallback("command set or file meta elements in the data set")
    if 0x7FE00010 in dataset:
        raise _Fallback("Pixel Data")
    preamble = _preamble(dataset)
    meta = _file_meta_bytes(
        getattr(dataset, "file_meta", None),
        dataset.get("SOPClassUID", None),
        dataset.get("SOPInstanceUID", None),
    )
    body = _encode_dataset(dataset, _DEFAULT_CODEC)
    return _file(preamble, meta, body)


def _preamble(dataset: Dataset) -> bytes | None:
    """The data set's preamble, where ``dcmwrite`` writes it as it is (or none)."""
    preamble = getattr(dataset, "preamble", None)
    if preamble and (not isinstance(preamble, bytes) or len(preamble) != 128):
        raise _Fallback("unusual preamble")
    return preamble


def _file(preamble: bytes | None, meta: bytes, body: bytes) -> bytes:
    """Preamble, prefix, the meta's group length and elements, and the data set's."""
    group_length = _SHORT_HEADER(0x0002, 0x0000, b"UL", 4) + _UL(len(meta))
    return b"".join((preamble or b"\x00" * 128, b"DICM", group_length, meta, body))


def encode_document(document: LazyCopy, file_meta: FileMetaDataset | None) -> bytes:
    """What :func:`encode` writes for ``document.make()`` (a copy of a read-only data set with
    new values, at the top level) holding ``file_meta``, without making it: the prototype's kept
    bytes with the new values' in their places, as :func:`encode_copy` writes an item. Raises
    where ``encode`` would not write these bytes itself (it would fall back to pydicom)."""
    shared, values = document.item._dict, document.values
    if not isinstance(shared, _ReadOnlyElements):
        raise TypeError("encode_document writes copies of read-only data sets")
    if any(tag >> 16 in (0, 2) or tag == 0x7FE00010 for tag in (*shared, *values)):
        raise _Fallback("command set, file meta elements or Pixel Data in the data set")
    preamble = _preamble(document.item)

    def value_of(tag: int) -> Any:
        if tag in values:
            return values[tag]
        element = dict.get(shared, tag)
        return None if element is None else element.value

    codec = _DEFAULT_CODEC
    if 0x00080005 in values or 0x00080005 in shared:
        codec = _codec(value_of(0x00080005))
    meta = _file_meta_bytes(file_meta, value_of(0x00080016), value_of(0x00080018))
    return _file(preamble, meta, _copy_body(shared, values, codec))


class BoundedCache(Generic[_K, _V]):
    """Values made once per key, kept up to ``limit`` of them (then it starts again): a bound
    on memory where a key can take many forms (a frame per combination of values' lengths)."""

    __slots__ = ("_limit", "_values")

    def __init__(self, limit: int = 256) -> None:
        self._values: dict[_K, _V] = {}
        self._limit = limit

    def get(self, key: _K, make: Callable[[], _V]) -> _V:
        """The value kept for ``key``, made by ``make`` the first time."""
        value = self._values.get(key, _ABSENT)
        if value is _ABSENT:
            if len(self._values) >= self._limit:
                self._values.clear()
            value = self._values[key] = make()
        return value  # type: ignore[return-value]


def joined(frame: list[bytes], data: list[bytes]) -> bytes:
    """A frame's pieces with the values' bytes between them (one value fewer than pieces)."""
    parts = frame + data  # of the right length
    parts[::2] = frame
    parts[1::2] = data
    return b"".join(parts)


#: The File Meta Information that _completed_file_meta made of a data set's, by what it was made
#: of, as the bytes before and after the SOP Instance UID (the one value each document has).
_FILE_META: BoundedCache[tuple[Any, ...], tuple[bytes, bytes]] = BoundedCache()
_INSTANCE_UID = BaseTag(0x00020003)


def _file_meta_bytes(source_meta: Any, sop_class: Any, instance: Any) -> bytes:
    """The elements of the File Meta Information (but its group length) that ``dcmwrite``
    writes for a data set of this meta and SOP Class and Instance UIDs: made by
    :func:`_completed_file_meta` once per kind of data set and meta (every value but the SOP
    Instance UID the same), which costs more than the rest of a GSPS's top level, and kept as
    the bytes around the instance UID (the data set's, which ``dcmwrite`` writes there)."""
    key = _file_meta_key(source_meta, sop_class, instance)
    if key is None:
        meta = _completed_file_meta(source_meta, sop_class, instance)
        return _encode_dataset(meta, _DEFAULT_CODEC)
    uid = _even(instance, "\0")
    if len(uid) > 0xFFFF:
        raise _Fallback("SOP Instance UID too long for a 16-bit length")
    before, after = _FILE_META.get(
        key, lambda: _file_meta_around_uid(_completed_file_meta(source_meta, sop_class, instance))
    )
    return b"".join((before, _SHORT_HEADER(0x0002, 0x0003, b"UI", len(uid)), uid, after))


def _file_meta_around_uid(meta: FileMetaDataset) -> tuple[bytes, bytes]:
    """The bytes of the elements of ``meta`` before and after its SOP Instance UID."""
    before = _encode_dataset(_subset(meta, lambda tag: tag < _INSTANCE_UID), _DEFAULT_CODEC)
    after = _encode_dataset(_subset(meta, lambda tag: tag > _INSTANCE_UID), _DEFAULT_CODEC)
    return before, after


def _file_meta_key(meta: Any, sop_class: Any, instance: Any) -> tuple[Any, ...] | None:
    """What the File Meta Information written for a data set of this meta and SOP Class and
    Instance UIDs depends on, besides the instance UID (a data set's, which ``dcmwrite`` puts
    in the meta whatever it held); None where it might depend on more."""
    if type(meta) is not FileMetaDataset or type(meta._dict) is not dict:
        return None
    if type(instance) is not UID or not instance:
        return None
    elements = []
    for tag, element in meta._dict.items():
        if type(element) is not DataElement:
            return None
        value = element.value
        if tag == _INSTANCE_UID:
            if element.VR != "UI":
                return None
            value = None  # replaced by the data set's
        elif tag == 0x00020000:
            value = None  # the group length is written anew: only its VR matters
        elif not isinstance(value, str | bytes | int):
            return None  # unhashable (several values) or unusual
        elements.append((tag, element.VR, element.is_undefined_length, type(value), value))
    return (sop_class, *elements)


def _subset(meta: FileMetaDataset, keep: Callable[[BaseTag], bool]) -> FileMetaDataset:
    """A File Meta Information data set of the elements of ``meta`` whose tags ``keep`` keeps."""
    part = FileMetaDataset()
    for tag, element in meta._dict.items():
        if keep(tag):
            dict.__setitem__(part._dict, tag, element)
    return part


def _completed_file_meta(source_meta: Any, ds_class: Any, ds_instance: Any) -> FileMetaDataset:
    """The File Meta Information ``dcmwrite`` writes with ``enforce_file_format`` for a data set
    whose meta is ``source_meta`` and whose SOP Class and Instance UIDs are ``ds_class`` and
    ``ds_instance``, less its group length: completed on copies of the elements,
    since pydicom completes the caller's in place; their values are text and bytes, so a deep
    copy is not needed."""
    file_meta = FileMetaDataset()
    if source_meta is not None:
        if type(source_meta) is not FileMetaDataset or type(source_meta._dict) is not dict:
            raise _Fallback("file meta of another kind")
        for tag, element in source_meta._dict.items():
            dict.__setitem__(file_meta._dict, tag, copy(element))
    if file_meta.get("TransferSyntaxUID", None) != ExplicitVRLittleEndian:
        raise _Fallback("transfer syntax is not Explicit VR Little Endian")
    # enforce_file_format: keep the meta's SOP Class/Instance UIDs in step with the data set
    meta_class = file_meta.get("MediaStorageSOPClassUID", None)
    if meta_class is None or (ds_class and ds_class != meta_class):
        file_meta.MediaStorageSOPClassUID = ds_class
    meta_instance = file_meta.get("MediaStorageSOPInstanceUID", None)
    if meta_instance is None or (ds_instance and ds_instance != meta_instance):
        file_meta.MediaStorageSOPInstanceUID = ds_instance
    validate_file_meta(file_meta, enforce_standard=True)  # adds version and implementation
    if "FileMetaInformationGroupLength" in file_meta:
        if file_meta["FileMetaInformationGroupLength"].VR != "UL":
            raise _Fallback("File Meta Information Group Length is not UL")
        del file_meta[0x00020000]
    return file_meta


def _encode_dataset(dataset: Dataset, codec: str) -> bytes:
    """The elements of one data set (or item) in tag order, as ``write_dataset`` writes them.

    ``codec`` is the Python codec inherited from the parent; the data set's own Specific
    Character Set, when present, replaces it for this data set and its items.
    """
    # The private dict is read directly: going through Dataset's accessors costs more than
    # encoding the element, and this is the point of the module. Raw elements are caught below.
    # dict.__getitem__: an editable copy's elements as they are (see _SharedElements).
    elements = dataset._dict
    if 0x00080005 in elements:
        codec = _codec(dataset.get("SpecificCharacterSet", None))
    get = dict.__getitem__
    parts: list[bytes] = []
    append = parts.append
    for tag in sorted(elements, key=int):  # key=int: BaseTag's own __lt__ is slow Python
        if not tag & 0xFFFF and tag >> 16 > 6:
            continue  # pydicom never writes the retired group lengths (PS3.5 7.2)
        elem = get(elements, tag)
        kind = type(elem)
        if kind is _ReadOnlyElement:
            append(_read_only_bytes(elem, tag, codec))
        elif kind is _LazySequence:
            append(_lazy_sequence_bytes(elem, tag, codec))
        else:
            if isinstance(elem, RawDataElement):
                elem = _converted(dataset, tag)
            append(_element_bytes(elem.VR, elem.value, elem.is_undefined_length, tag, codec))
    return b"".join(parts)


def _read_only_bytes(elem: DataElement, tag: int, codec: str) -> bytes:
    """A read-only element: shared and unchangeable, so encoded once."""
    kept = elem.__dict__[_BYTES]
    data = kept.get(codec)
    if data is None:
        undefined = elem.is_undefined_length
        data = kept[codec] = _element_bytes(elem.VR, elem.value, undefined, tag, codec)
    return data  # type: ignore[no-any-return]


def _lazy_sequence_bytes(lazy: _LazySequence, tag: int, codec: str) -> bytes:
    """The bytes of ``lazy.make()``, without making it."""
    return _entries_bytes(lazy.entries, lazy.element.is_undefined_length, tag, codec)


def _entries_bytes(entries: Entries, undefined: bool, tag: int, codec: str) -> bytes:
    """A sequence of items and copies to make, the copies written without being made."""
    parts = []
    for entry in entries:
        kind = type(entry)
        if kind is LazyCopy:
            parts.append(_lazy_copy_bytes(entry, codec))
        elif kind is DeferredCopy:
            parts.append(entry.encoded(codec))
        else:
            parts.append(_encode_item(entry, codec))
    return _sequence_bytes(b"".join(parts), undefined, tag)


class ItemTemplate:
    """The bytes of copies of a read-only item with new values at ``tags``, for one codec:
    what :func:`encode` writes for ``LazyCopy(item, values)``, from the same plan, for a writer
    that knows its values' places and makes no copies (:class:`.shared.DeferredCopy`)."""

    __slots__ = ("_first", "_frames", "_slots", "_values")

    def __init__(self, item: Dataset, tags: tuple[BaseTag, ...], codec: str) -> None:
        shared = item._dict
        if not isinstance(shared, _ReadOnlyElements) or 0x00080005 in shared:
            raise TypeError("an ItemTemplate is made of a read-only item without a character set")
        self._first, slots = _plan(shared, tags, codec)
        self._slots = tuple(
            (tag, _element_writer(vr, undefined, tag, codec), after)
            for tag, vr, undefined, after in slots
        )
        self._values = tuple(
            _value_writer(vr, undefined, tag, codec) for tag, vr, undefined, _ in slots
        )
        self._frames: BoundedCache[tuple[int, ...], list[bytes]] = BoundedCache()

    def item(self, values: dict[int, Any]) -> bytes:
        """The item holding ``values`` by tag: an element's value as pydicom converts it, or
        for a sequence the bytes of its items."""
        return self.item_of(*[values[tag] for tag, _, _ in self._slots])

    def item_of(self, *values: Any) -> bytes:
        """:meth:`item` with the values given in the order of their tags: the values' bytes
        joined with the pieces of the frame (:meth:`frame`) for their lengths, made once."""
        data = self.values_of(*values)
        frame = self._frames.get(
            tuple(map(len, data)), lambda: self.frame(*zip(values, data, strict=True))
        )
        return joined(frame, data)

    def values_of(self, *values: Any) -> list[bytes]:
        """The bytes of ``values`` (in the order of their tags) as their elements hold them:
        what :meth:`frame` takes with each value."""
        return [write(value) for write, value in zip(self._values, values, strict=True)]

    def frame(self, *values: tuple[Any, bytes]) -> list[bytes]:
        """:meth:`item_of`'s bytes cut around each value's bytes: ``values`` are (value, its
        bytes as its element holds them) in the order of their tags. What comes back holds for
        every value whose bytes are as long, so a writer of many items of one shape joins
        the pieces and the values' bytes. Raises ValueError where a value's element does not
        hold those bytes right after its header."""
        pieces = [self._first]
        for (tag, write, after), (value, data) in zip(self._slots, values, strict=True):
            element = write(value)
            start = _LONG_HEADER_SIZE if element[4:6] in _LONG_VR_BYTES else _SHORT_HEADER_SIZE
            if element[start : start + len(data)] != data:
                raise ValueError(f"the element {Tag(tag)} does not hold the bytes given")
            pieces[-1] += element[:start]
            pieces.append(element[start + len(data) :] + after)
        length = sum(map(len, pieces)) + sum(len(data) for _, data in values)
        pieces[0] = _TAG(0xFFFE, 0xE000) + _UL(length) + pieces[0]
        return pieces


def _element_writer(vr: str, undefined: bool, tag: int, codec: str) -> Callable[[Any], bytes]:
    """How :meth:`ItemTemplate.frame` writes one value's element: :func:`_element_bytes`, or
    for a sequence, whose value is its items' bytes, :func:`_sequence_bytes`."""
    if vr == "SQ":
        return partial(_sequence_bytes, undefined=undefined, tag=tag)
    return partial(_element_bytes, vr, undefined=undefined, tag=tag, codec=codec)


def _value_writer(vr: str, undefined: bool, tag: int, codec: str) -> Callable[[Any], bytes]:
    """How an ItemTemplate writes one value's bytes as its element holds them, after its header:
    :func:`_element_bytes` less the header, with the values that make up a template's bulk (a
    sequence's items, numbers, a UID or number string, a text) written directly; the same
    bytes (:meth:`ItemTemplate.frame` checks them once per length)."""
    header_size = _LONG_HEADER_SIZE if vr in _LONG_VRS else _SHORT_HEADER_SIZE

    def generic(value: Any) -> bytes:
        return _element_bytes(vr, value, undefined, tag, codec)[header_size:]

    if vr == "SQ":
        return lambda body: body  # type: ignore[no-any-return]
    if undefined:
        return generic
    code = _NUMBER_CODES.get(vr)
    if code is not None and tag not in _LUT_DESCRIPTOR_TAGS:
        kind = float if code in "df" else int
        single = struct.Struct("<" + code).pack

        def numbers(value: Any) -> bytes:
            if type(value) is kind:
                return single(value)
            if type(value) is list:  # the encoder packs a list's values as they are too
                return struct.pack(f"<{len(value)}{code}", *value)
            return generic(value)

        return numbers
    if vr in ("UI", "DS", "IS"):
        padding = "\0" if vr == "UI" else " "
        kind = str if vr == "UI" else None  # a UID is a str; a DS or IS number is not

        def text(value: Any) -> bytes:
            if type(value) is str or (kind is str and isinstance(value, str)):
                return _even(value, padding)
            return generic(value)

        return text
    if vr in _SHORT_STRING_VRS:
        text_codec = codec if vr in _CHARSET_VRS else default_encoding

        def short_text(value: Any) -> bytes:
            if type(value) is not str:
                return generic(value)
            data = value.encode(text_codec)
            return data + b" " if len(data) % 2 else data

        return short_text
    return generic


def encode_item(item: Dataset, codec: str) -> bytes:
    """One sequence item as :func:`encode` writes it (a read-only item's bytes are kept)."""
    return _encode_item(item, codec)


def encode_copy(copy: LazyCopy, codec: str) -> bytes:
    """The item ``copy.make()`` as :func:`encode` writes it, without making it."""
    return _lazy_copy_bytes(copy, codec)


#: How lazy copies of a read-only item with new values at some tags are encoded (_plan): the
#: first run of kept bytes, then for each new value its tag, VR and length flag and the run of
#: kept bytes after it.
_Plan = tuple[bytes, tuple[tuple[BaseTag, str, bool, bytes], ...]]


def _lazy_copy_bytes(copy: LazyCopy, codec: str) -> bytes:
    """The bytes of the item ``copy.make()`` (of defined length, as its prototype), without
    making it: the prototype's kept bytes, with the new values' in their places."""
    shared = copy.item._dict
    values = copy.values
    if 0x00080005 in values or 0x00080005 in shared:  # a character set of its own
        return _encode_item(copy.make(), codec)
    return _item(_copy_body(shared, values, codec))


def _copy_body(shared: _ReadOnlyElements, values: Mapping[BaseTag, Any], codec: str) -> bytes:
    """The elements of a copy of a read-only item or data set holding ``values``, in ``codec``."""
    key = (tuple(values), codec)
    plan = shared.plans.get(key)
    if plan is None:
        plan = shared.plans[key] = _plan(shared, key[0], codec)
    first, slots = plan
    parts = [first]
    for tag, vr, undefined, after in slots:
        value = values[tag]
        if type(value) is tuple:
            parts.append(_entries_bytes(value, undefined, tag, codec))
        else:
            parts.append(_element_bytes(vr, value, undefined, tag, codec))
        parts.append(after)
    return b"".join(parts)


def _plan(shared: _ReadOnlyElements, tags: tuple[BaseTag, ...], codec: str) -> _Plan:
    """How copies of a read-only item with new values at ``tags`` are encoded: its elements in
    tag order, the kept bytes of the unchanged ones joined between the new ones."""
    runs: list[bytes] = []
    slots: list[tuple[BaseTag, str, bool]] = []
    run: list[bytes] = []
    new = {int(tag): tag for tag in tags}  # the copies' own tag objects: faster look-ups
    for tag in sorted({*shared, *tags}, key=int):
        if not tag & 0xFFFF and tag >> 16 > 6:
            continue  # as _encode_dataset
        if tag in new:
            runs.append(b"".join(run))
            run = []
            template = _template(shared, tag)
            slots.append((new[tag], template.VR, template.is_undefined_length))
        else:
            run.append(_read_only_bytes(dict.__getitem__(shared, tag), tag, codec))
    runs.append(b"".join(run))
    return runs[0], tuple((*slot, after) for slot, after in zip(slots, runs[1:], strict=True))


def _element_bytes(vr: str, value: Any, undefined: bool, tag: int, codec: str) -> bytes:
    """One element, header and value, as ``write_data_element`` writes it (explicit VR)."""
    if type(value) is str and vr in _SHORT_STRING_VRS and not undefined:
        # The bulk of an SR (code values, meanings, value types): one plain string value.
        # Padding after encoding equals write_string's padding before it (Latin-1 is 1:1).
        data = value.encode(codec if vr in _CHARSET_VRS else default_encoding)
        if len(data) % 2:
            data += b" "
        if len(data) > 0xFFFF:
            raise _Fallback(f"{vr} value of {Tag(tag)} too long for a 16-bit length")
        return _SHORT_HEADER(tag >> 16, tag & 0xFFFF, _VR_BYTES[vr], len(data)) + data
    if vr == "SQ":
        body = b"".join([_encode_item(item, codec) for item in value]) if value else b""
        return _sequence_bytes(body, undefined, tag)
    if tag >> 16 == 0x7FE0:
        raise _Fallback("pixel data")
    encoder = _ENCODERS.get(vr)
    if encoder is None:
        raise _Fallback(f"VR {vr!r} of {Tag(tag)}")
    body = b"" if _is_empty(value) else encoder(value, codec, tag)
    if undefined:
        raise _Fallback(f"undefined length {vr} {Tag(tag)}")
    vr_bytes = _VR_BYTES[vr]
    if vr in _LONG_VRS:
        return _LONG_HEADER(tag >> 16, tag & 0xFFFF, vr_bytes, len(body)) + body
    if len(body) > 0xFFFF:
        raise _Fallback(f"{vr} value of {Tag(tag)} too long for a 16-bit length")
    return _SHORT_HEADER(tag >> 16, tag & 0xFFFF, vr_bytes, len(body)) + body


def _item(body: bytes) -> bytes:
    """A sequence item of defined length around its encoded elements."""
    return _TAG(0xFFFE, 0xE000) + _UL(len(body)) + body


def _sequence_bytes(body: bytes, undefined: bool, tag: int) -> bytes:
    """An SQ element around its encoded items: of undefined length if flagged so."""
    if undefined:
        header = _LONG_HEADER(tag >> 16, tag & 0xFFFF, b"SQ", _UNDEFINED)
        return b"".join((header, body, _SEQUENCE_DELIMITER))
    return _LONG_HEADER(tag >> 16, tag & 0xFFFF, b"SQ", len(body)) + body


def _converted(dataset: Dataset, tag: int) -> DataElement:
    """A raw element as pydicom's writer would take it, or fall back where it copies the bytes.

    ``write_dataset`` converts raw elements (through ``Dataset.__getitem__``) when the encoding
    or the character set changes, and otherwise copies their bytes as read; only the first is
    reproduced here.
    """
    if (
        dataset.original_encoding == _EXPLICIT_LE
        and dataset.original_character_set == dataset._character_set
    ):
        raise _Fallback(f"raw element {Tag(tag)} would be copied as read")
    return dataset[tag]


def _encode_item(item: Dataset, codec: str) -> bytes:
    """One sequence item: defined length unless flagged undefined, as ``write_sequence_item``."""
    if not isinstance(item, Dataset):
        raise _Fallback("sequence item is not a Dataset")
    elements = item._dict
    if isinstance(elements, _ReadOnlyElements):  # shared and unchangeable: encoded once
        encoded = elements.encoded.get(codec)
        if encoded is None:
            body = _encode_dataset(item, codec)  # its length flag is pinned to defined length
            encoded = elements.encoded[codec] = _item(body)
        return encoded
    body = _encode_dataset(item, codec)
    if item.is_undefined_length_sequence_item:
        return b"".join((_ITEM_UNDEFINED, body, _ITEM_DELIMITER))
    return _item(body)


def _codec(charset: object) -> str:
    """The Python codec for a Specific Character Set value, or fall back."""
    if charset is not None and not isinstance(charset, str):
        raise _Fallback(f"Specific Character Set {charset!r}")
    codec = _CHARSETS.get(charset)
    if codec is None:
        raise _Fallback(f"Specific Character Set {charset!r}")
    return codec


def _is_empty(value: Any) -> bool:
    """``DataElement.is_empty`` (VM 0) for a value of a VR other than SQ."""
    cls = type(value)
    if cls is str or cls is bytes:
        return not value
    if value is None:
        return True
    if isinstance(value, str | bytes | PersonName):
        return not value
    if isinstance(value, int | float):  # DS, IS, FD...: one value
        return False
    if isinstance(value, BufferedIOBase):
        raise _Fallback("buffered value")
    try:
        iter(value)
    except TypeError:
        return False
    return len(value) == 0


def _is_multi(value: Any) -> bool:
    """pydicom's ``_is_multi_value``, leaving numpy arrays to pydicom."""
    if isinstance(value, str | int | float):  # the most common: no ABC look-up
        return False
    if isinstance(value, _MULTI):
        return True
    if _ndarray is not None and isinstance(value, _ndarray):
        raise _Fallback("numpy array value")
    return False


def _even(text: str, padding: str = " ") -> bytes:
    """Pad ``text`` to even length and encode it with pydicom's default encoding."""
    if len(text) % 2:
        text += padding
    return text.encode(default_encoding)


def _string(value: Any, codec: str, tag: int, padding: str = " ") -> bytes:
    """AE, AS, CS, UR and string DA/DT/TM (``write_string``): default encoding only."""
    if _is_multi(value):
        value = "\\".join(value)
    if not isinstance(value, str):
        raise _Fallback(f"non-string value of {Tag(tag)}")
    return _even(value, padding)


def _ui(value: Any, codec: str, tag: int) -> bytes:
    """UI (``write_UI``): padded with NUL."""
    return _string(value, codec, tag, "\0")


def _text(value: Any, codec: str, tag: int) -> bytes:
    """LO, LT, SH, ST, UC, UT (``write_text``): the character set's codec, strict."""
    if _is_multi(value):
        if isinstance(value[0], str):
            data = b"\\".join([item.encode(codec) for item in value])
        else:
            data = b"\\".join(value)
    elif isinstance(value, str):
        data = value.encode(codec)  # UnicodeError: pydicom replaces and warns; it decides
    elif isinstance(value, bytes):
        data = value
    else:
        raise _Fallback(f"unexpected text value of {Tag(tag)}")
    return data + b" " if len(data) % 2 else data


def _person_name(value: Any, codec: str, tag: int) -> bytes:
    """PN (``write_PN``): each name through ``PersonName.encode``."""
    names = [value] if isinstance(value, str | bytes | PersonName) or len(value) == 1 else value
    data = b"\\".join([name.encode([codec]) for name in names])
    return data + b" " if len(data) % 2 else data


def _number_string(value: Any, codec: str, tag: int) -> bytes:
    """DS, IS (``write_number_string``): the original string when read, else ``str``."""
    if _is_multi(value):
        text = "\\".join(
            x.original_string if hasattr(x, "original_string") else str(x) for x in value
        )
    elif hasattr(value, "original_string"):
        text = value.original_string
    else:
        text = str(value)
    return _even(text)


def _date_time(plain: str, fractional: str | None = None) -> _Encoder:
    """DA, DT, TM (``write_DA`` and friends): strings as they are; other values as they were
    read (``original_string``) or formatted with ``plain`` (``fractional`` when they have
    microseconds)."""

    def format_value(value: Any) -> str:
        if value is None:
            return ""
        if hasattr(value, "original_string"):
            return value.original_string
        if fractional is not None and value.microsecond > 0:
            return value.strftime(fractional)
        return value.strftime(plain)

    def encode_value(value: Any, codec: str, tag: int) -> bytes:
        if isinstance(value, str):
            return _string(value, codec, tag)
        if _is_multi(value):
            text = "\\".join(x if isinstance(x, str) else format_value(x) for x in value)
        else:
            text = format_value(value)
        return _even(text)

    return encode_value


def _numbers(fmt: str) -> _Encoder:
    """US, SS, UL, SL, UV, SV, FL, FD (``write_numbers``), little endian."""
    single = struct.Struct("<" + fmt).pack

    def encode_value(value: Any, codec: str, tag: int) -> bytes:
        if fmt == "h" and tag in _LUT_DESCRIPTOR_TAGS:
            raise _Fallback("LUT descriptor")
        if hasattr(value, "append"):  # pydicom's test for a list of numbers
            return struct.pack(f"<{len(value)}{fmt}", *value)
        return single(value)

    return encode_value


def _attribute_tags(value: Any, codec: str, tag: int) -> bytes:
    """AT (``write_ATvalue``): one or more tags as two little endian uint16."""
    try:
        iter(value)
    except TypeError:
        tags = [Tag(value)]
    else:
        tags = [Tag(item) for item in value]
    return b"".join([_TAG(item >> 16, item & 0xFFFF) for item in tags])


def _binary(value: Any, codec: str, tag: int) -> bytes:
    """OB, OD, OF, OL, OV, OW (``write_OBvalue``/``write_OWvalue``): padded with NUL."""
    if not isinstance(value, bytes | bytearray):
        raise _Fallback(f"non-bytes value of {Tag(tag)}")
    data = bytes(value)
    return data + b"\x00" if len(data) % 2 else data


def _unknown(value: Any, codec: str, tag: int) -> bytes:
    """UN (``write_UN``): the bytes as they are, never padded."""
    if not isinstance(value, bytes | bytearray):
        raise _Fallback(f"non-bytes value of {Tag(tag)}")
    return bytes(value)


#: The struct codes of the binary number VRs (``write_numbers``).
_NUMBER_CODES = {"FD": "d", "FL": "f", "SL": "l", "SS": "h", "SV": "q", "UL": "L", "US": "H",
                 "UV": "Q"}  # fmt: skip

_ENCODERS: dict[str, _Encoder] = {
    "AE": _string,
    "AS": _string,
    "CS": _string,
    "UR": _string,
    "UI": _ui,
    "DA": _date_time("%Y%m%d"),
    "DT": _date_time("%Y%m%d%H%M%S%z", "%Y%m%d%H%M%S.%f%z"),
    "TM": _date_time("%H%M%S", "%H%M%S.%f"),
    "DS": _number_string,
    "IS": _number_string,
    "LO": _text,
    "LT": _text,
    "SH": _text,
    "ST": _text,
    "UC": _text,
    "UT": _text,
    "PN": _person_name,
    "AT": _attribute_tags,
    **{vr: _numbers(code) for vr, code in _NUMBER_CODES.items()},
    "OB": _binary,
    "OD": _binary,
    "OF": _binary,
    "OL": _binary,
    "OV": _binary,
    "OW": _binary,
    "UN": _unknown,
}

_VR_BYTES: dict[str, bytes] = {vr: vr.encode("ascii") for vr in [*_ENCODERS, "SQ"]}
