"""Fuzz ingest and the input gate with mutated real DICOM files.

The invariant (DESIGN.md §7): whatever bytes arrive, ``read_radiograph`` followed by
``gate.check`` either yields a radiograph that passes or refuses with a reason, or raises an
:class:`~anaxreport.errors.AnaxReportError` subclass; never another exception, and never
longer than a per-input time limit. This is the Reporter's path without the model.

The corpus is the six ``samples/`` radiographs plus a shrunken sample written in every transfer
syntax ingest reads (native little/big endian, implicit, deflated, RLE, JPEG baseline, extended
and lossless, JPEG-LS, JPEG 2000) and with LUT sequences, windows, MONOCHROME1, signed data and
nested sequences. Each input takes one corpus file and applies one to three mutations, at the
byte level (bit flips, truncation, overwrites, insertions, deletions, element length fields,
Pixel Data length, transfer syntax UID) or at the data set level (deleted elements, values of
the wrong VM, negative, huge or NaN numbers, inserted tags, changed VRs, deep or damaged
sequences), and is read both as a file and as a pydicom Dataset.

Run it as a script::

    python tests/fuzz_ingest.py --count 10000 --seed 1

It prints the count, the outcome histogram (``ok`` or the reason codes) and the time, and exits
1 if any input broke the invariant (``--save DIR`` keeps those inputs). Input ``i`` of seed
``s`` is reproducible alone with ``--seed s --only i``. ``tests/test_fuzz_ingest.py`` runs a
few hundred inputs in the normal test suite.
"""

from __future__ import annotations

import argparse
import collections
import copy
import io
import logging
import random
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from anaxreport.errors import AnaxReportError  # noqa: E402
from anaxreport.gate import GateRules, check  # noqa: E402
from anaxreport.ingest import read_radiograph  # noqa: E402

__all__ = ["FuzzResult", "build_corpus", "fuzz", "main"]

RULES = (GateRules(), GateRules(unknown_view="image", unknown_body_part="refuse"))


class FuzzTimeout(BaseException):
    """Raised by the alarm when one input runs past the time limit (a BaseException, so no
    ``except Exception`` in the code under test can swallow it)."""


# -- the corpus ----------------------------------------------------------------------------


def _shrink(pixels: np.ndarray, rows: int, columns: int) -> np.ndarray:
    ys = np.linspace(0, pixels.shape[0] - 1, rows).round().astype(int)
    xs = np.linspace(0, pixels.shape[1] - 1, columns).round().astype(int)
    return pixels[np.ix_(ys, xs)]


def _to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _with_values(template: Dataset, pixels: np.ndarray, bits: int, signed: bool) -> Dataset:
    ds = Dataset(copy.deepcopy(template))  # a plain Dataset: free to change byte order
    ds.file_meta = copy.deepcopy(template.file_meta)
    values = np.round(pixels * (2**bits - 1)).astype(np.int64) - (2 ** (bits - 1) if signed else 0)
    dtype = np.uint8 if bits == 8 else (np.int16 if signed else np.uint16)
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    ds.PixelData = values.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


def _variants(template: Dataset, pixels: np.ndarray) -> Iterator[tuple[str, Dataset]]:
    """The small sample in each transfer syntax and header variant."""
    yield "explicit-le-12", _with_values(template, pixels, 12, False)
    ds = _with_values(template, pixels, 12, False)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    yield "implicit-le", ds
    ds = _with_values(template, pixels, 16, True)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = np.frombuffer(ds.PixelData, "<i2").astype(">i2").tobytes()
    yield "big-endian-signed", ds
    ds = _with_values(template, pixels, 14, False)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    yield "deflated", ds
    for name, syntax, bits, signed, options in (
        ("rle", RLELossless, 16, True, {}),
        ("jpeg-ls", JPEGLSLossless, 12, False, {}),
        ("jpeg-ls-near", JPEGLSNearLossless, 12, False, {"jls_error": 3}),
        ("j2k", JPEG2000Lossless, 12, True, {}),
        ("j2k-lossy", JPEG2000, 12, False, {"j2k_cr": [10]}),
    ):
        ds = _with_values(template, pixels, bits, signed)
        try:
            ds.compress(syntax, **options)
        except (RuntimeError, ValueError) as exc:  # no encoder plugin here
            logging.getLogger(__name__).info("corpus: no %s (%s)", name, exc)
            continue
        yield name, ds
    yield from _jpeg_variants(template, pixels)
    ds = _with_values(template, pixels, 12, False)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = (
        ["2000", "1000"],
        ["3000", "500"],
        "SIGMOID",
    )
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-1024"
    yield "mono1-windows-rescale", ds
    ds = _with_values(template, pixels, 12, False)
    voi = Dataset()
    voi.LUTDescriptor = [4096, 0, 16]
    voi.add_new("LUTData", "OW", (np.arange(4096, dtype="<u2") * 16).tobytes())
    modality = Dataset()
    modality.LUTDescriptor = [4096, 0, 12]
    modality.ModalityLUTType = "US"
    modality.add_new("LUTData", "OW", np.arange(4096, dtype="<u2")[::-1].copy().tobytes())
    ds.VOILUTSequence, ds.ModalityLUTSequence = [voi], [modality]
    view = _code("399348003", "antero-posterior")
    view.ViewModifierCodeSequence = [_code("1", "nested")]
    ds.ViewCodeSequence = [view]
    ds.AnatomicRegionSequence = [_code("51185008", "Thorax")]
    ds.add_new(0x00091010, "LO", "PRIVATE")  # a private block with a nested sequence
    ds.add_new(0x00090010, "LO", "FUZZ")
    inner = Dataset()
    inner.add_new(0x00091011, "SQ", DicomSequence([_code("2", "deep")]))
    ds.add_new(0x00091012, "SQ", DicomSequence([inner]))
    yield "luts-sequences", ds


def _jpeg_variants(template: Dataset, pixels: np.ndarray) -> Iterator[tuple[str, Dataset]]:
    try:
        import imagecodecs
    except ImportError:
        return
    for name, syntax, bits, kwargs in (
        ("jpeg-baseline", JPEGBaseline8Bit, 8, {"level": 90}),
        ("jpeg-extended", JPEGExtended12Bit, 12, {"level": 90, "bitspersample": 12}),
        ("jpeg-lossless", JPEGLosslessSV1, 12, {"lossless": True, "bitspersample": 12}),
    ):
        ds = _with_values(template, pixels, bits, False)
        dtype = np.uint8 if bits == 8 else np.uint16
        values = np.frombuffer(ds.PixelData, dtype).reshape(pixels.shape)
        ds.PixelData = encapsulate([bytes(imagecodecs.jpeg8_encode(values, **kwargs))])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        yield name, ds


def build_corpus() -> list[tuple[str, bytes]]:
    """(name, file bytes) of every seed file: the samples and the small variants."""
    corpus = []
    samples = sorted((ROOT / "samples").glob("*.dcm"))
    for path in samples:
        corpus.append((path.stem, path.read_bytes()))
    template = pydicom.dcmread(samples[0])
    pixels = read_radiograph(template).pixels
    small = _shrink(pixels, 96, 88).astype(np.float64)
    template.Rows, template.Columns = small.shape
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if keyword in template:
            delattr(template, keyword)
    for name, ds in _variants(template, small):
        corpus.append((name, _to_bytes(ds)))
    return corpus


# -- mutations -----------------------------------------------------------------------------

Mutator = Callable[[bytes, random.Random], bytes]
_INTERESTING_LENGTHS = (0, 1, 2, 3, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF)
_KEY_TAGS = (
    (0x0002, 0x0010), (0x0008, 0x0016), (0x0008, 0x0060), (0x0018, 0x0015), (0x0018, 0x5101),
    (0x0028, 0x0002), (0x0028, 0x0004), (0x0028, 0x0008), (0x0028, 0x0010), (0x0028, 0x0011),
    (0x0028, 0x0100), (0x0028, 0x0101), (0x0028, 0x0102), (0x0028, 0x0103), (0x0028, 0x1050),
    (0x0028, 0x1051), (0x0028, 0x1052), (0x0028, 0x1053), (0x0028, 0x3010), (0x0028, 0x3000),
    (0x0054, 0x0220), (0x0008, 0x2218), (0x7FE0, 0x0010), (0xFFFE, 0xE000), (0xFFFE, 0xE0DD),
)  # fmt: skip


def _tag_offsets(data: bytes, rng: random.Random) -> list[int]:
    """Byte offsets where a key tag is written (either byte order)."""
    group, element = rng.choice(_KEY_TAGS)
    offsets = []
    for order in ("little", "big"):
        needle = group.to_bytes(2, order) + element.to_bytes(2, order)
        start = data.find(needle)
        while start != -1 and len(offsets) < 8:
            offsets.append(start)
            start = data.find(needle, start + 1)
    return offsets


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 16)):
        position = rng.randrange(len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def overwrite(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    length = rng.choice((1, 2, 4, 8, 64, 512))
    fill = rng.choice((b"\x00", b"\xff", bytes([rng.randrange(256)])))
    junk = rng.randbytes(length) if rng.random() < 0.5 else fill * length
    return data[:start] + junk + data[start + length :]


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    return data[:start] + rng.randbytes(rng.choice((1, 2, 3, 4, 8, 100))) + data[start:]


def delete_bytes(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    return data[:start] + data[start + rng.choice((1, 2, 4, 8, 100, 1000)) :]


def duplicate_chunk(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    chunk = data[start : start + rng.choice((8, 16, 64, 256))]
    at = rng.randrange(len(data))
    return data[:at] + chunk + data[at:]


def corrupt_length(data: bytes, rng: random.Random) -> bytes:
    """Give a key element (or item) a wrong 2- or 4-byte value length."""
    offsets = _tag_offsets(data, rng)
    if not offsets:
        return flip_bits(data, rng)
    at = rng.choice(offsets)
    length = rng.choice(_INTERESTING_LENGTHS)
    width, where = rng.choice(
        ((2, at + 6), (4, at + 8), (4, at + 4))
    )  # explicit short/long, implicit
    order = rng.choice(("little", "big"))
    value = (length & (0xFFFF if width == 2 else 0xFFFFFFFF)).to_bytes(width, order)
    return data[:where] + value + data[where + width :]


def corrupt_vr(data: bytes, rng: random.Random) -> bytes:
    """Replace the VR of a key element (explicit VR files) with another, or garbage."""
    offsets = _tag_offsets(data, rng)
    if not offsets:
        return flip_bits(data, rng)
    at = rng.choice(offsets) + 4
    vr = rng.choice((b"UN", b"OB", b"SQ", b"US", b"SS", b"DS", b"IS", b"FD", b"AT", b"\x00\x00"))
    return data[:at] + vr + data[at + 2 :]


def bogus_transfer_syntax(data: bytes, rng: random.Random) -> bytes:
    """Another, unknown or malformed Transfer Syntax UID, usually with a matching length."""
    start = data.find(b"1.2.840.10008.1.2", 128)
    if start == -1 or start > 400:
        return flip_bits(data, rng)
    length = int.from_bytes(data[start - 2 : start], "little")
    uid = rng.choice(
        (b"1.2.3.4", b"1.2.840.10008.1.2.4.100", b"1.2.840.10008.1.2.4.201", b"", b"garbage!",
         b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.1.99", b"1.2.840.10008.1.2.4.50",
         b"1.2.840.10008.1.2.5", b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.4.91")
    )  # fmt: skip
    uid += b"\x00" * (len(uid) % 2)
    if rng.random() < 0.8:  # keep the element well formed: fix its length field
        return data[: start - 2] + len(uid).to_bytes(2, "little") + uid + data[start + length :]
    return data[:start] + uid + data[start + length :]


def pixel_length(data: bytes, rng: random.Random) -> bytes:
    """Make Pixel Data longer or shorter than the header says, keeping the file parseable."""
    ds = _parse(data)
    if ds is None or "PixelData" not in ds or ds["PixelData"].is_undefined_length:
        return truncate(data, rng)
    value = ds.PixelData
    if not isinstance(value, bytes) or len(value) < 4:
        return truncate(data, rng)
    cut = rng.choice((1, 2, 100, len(value) // 2, len(value) - 2))
    ds.PixelData = value[:-cut] if rng.random() < 0.7 else value + bytes(cut + cut % 2)
    return _write(ds, data)


def _parse(data: bytes) -> Dataset | None:
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:  # a mutation that cannot parse falls back to bytes
        return None


def _write(ds: Dataset, fallback: bytes) -> bytes:
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer)
    except Exception:  # pydicom refuses to write some corrupt values
        return fallback
    return buffer.getvalue()


_WEIRD_VALUES: tuple[object, ...] = (
    "", "nan", "NaN", "inf", "-inf", "1e999", "-1", "-32768", "65535", "4294967296", "0",
    "abc", "1\\2\\3", "\x00\x01", "é" * 70, "9" * 64, ["1", "2"], [], "MONOCHROME3", "RGB",
    "PALETTE COLOR", "YBR_FULL_422", "LATERAL", "HAND", "CHEST", "-0", "0.0000001",
)  # fmt: skip
_WEIRD_KEYWORDS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PlanarConfiguration", "NumberOfFrames", "PhotometricInterpretation",
    "WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept", "VOILUTFunction",
    "PixelSpacing", "ImagerPixelSpacing", "Modality", "BodyPartExamined", "ViewPosition",
    "PatientAge", "PatientBirthDate", "StudyDate", "PatientOrientation", "SpecificCharacterSet",
    "PixelPaddingValue", "SmallestImagePixelValue", "LargestImagePixelValue", "SOPClassUID",
)  # fmt: skip


def delete_element(data: bytes, rng: random.Random) -> bytes:
    ds = _parse(data)
    if ds is None or not len(ds):
        return flip_bits(data, rng)
    keys = list(ds.keys())
    tag = rng.choice(keys) if rng.random() < 0.5 else None
    keyword = rng.choice((*_WEIRD_KEYWORDS, "PixelData", "VOILUTSequence", "ModalityLUTSequence"))
    if tag is not None:
        del ds[tag]
    elif keyword in ds:
        delattr(ds, keyword)
    if rng.random() < 0.2 and "TransferSyntaxUID" in ds.file_meta:
        del ds.file_meta.TransferSyntaxUID
    return _write(ds, data)


def weird_value(data: bytes, rng: random.Random) -> bytes:
    """Wrong VM, negative, huge, NaN or non-ASCII values where numbers and codes belong."""
    ds = _parse(data)
    if ds is None:
        return flip_bits(data, rng)
    keyword = rng.choice(_WEIRD_KEYWORDS)
    value = rng.choice(_WEIRD_VALUES)
    try:
        element = ds.get(keyword)
        element = ds[keyword] if element is not None else None
        vr = element.VR if element is not None else pydicom.datadict.dictionary_VR(keyword)
        if vr in ("US", "SS", "UL", "SL"):  # binary: write the bytes of a weird number
            number = rng.choice((0, 1, 2, 3, 7, 255, 0xFFFF, 0x8000, 0x7FFF, 24, 32, 64))
            ds.add_new(keyword, "OB" if rng.random() < 0.3 else vr, number)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                setattr(ds, keyword, value)
    except Exception:  # pydicom refuses some assignments; keep the input
        return flip_bits(data, rng)
    return _write(ds, data)


def insert_tag(data: bytes, rng: random.Random) -> bytes:
    """A random private or standard tag, possibly a deep or damaged sequence."""
    ds = _parse(data)
    if ds is None:
        return flip_bits(data, rng)
    choice = rng.random()
    if choice < 0.4:
        item = Dataset()
        node = item
        for _ in range(rng.randint(1, 40)):
            child = Dataset()
            child.add_new(0x00091001, "LO", "x")
            node.add_new(0x00091002, "SQ", DicomSequence([child]))
            node = child
        ds.add_new(0x00090010, "LO", "FUZZ")
        ds.add_new(0x00091000, "SQ", DicomSequence([item]))
    elif choice < 0.7:
        group = rng.choice((0x0009, 0x0011, 0x0029, 0x7FD1))
        ds.add_new((group << 16) | rng.randrange(0x1000, 0x10000), "UN", rng.randbytes(16))
    else:
        keyword = rng.choice(("ViewCodeSequence", "AnatomicRegionSequence", "VOILUTSequence"))
        item = Dataset()
        item.LUTDescriptor = [rng.choice((0, 1, 10, 65535)), rng.choice((0, -5, 60000)), 16]
        item.CodeValue, item.CodeMeaning = "399173006", rng.choice(("lateral", "", "x" * 80))
        item.add_new(0x00283006, "OW", rng.randbytes(rng.choice((0, 1, 2, 20))))
        try:
            setattr(ds, keyword, [item])
        except Exception:
            return flip_bits(data, rng)
    return _write(ds, data)


def damage_sequence(data: bytes, rng: random.Random) -> bytes:
    """Break item and sequence delimiters (FFFE,E000/E00D/E0DD) or their lengths."""
    needles = (b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0")
    needle = rng.choice(needles)
    at = data.find(needle, rng.randrange(len(data)) if rng.random() < 0.5 else 0)
    if at == -1:
        return corrupt_length(data, rng)
    action = rng.random()
    if action < 0.4:
        return data[:at] + data[at + 8 :]  # drop the delimiter
    if action < 0.7:
        length = rng.choice(_INTERESTING_LENGTHS).to_bytes(4, "little")
        return data[: at + 4] + length + data[at + 8 :]
    return data[:at] + rng.choice(needles) + data[at + 4 :]


MUTATORS: tuple[Mutator, ...] = (
    flip_bits, truncate, overwrite, insert_bytes, delete_bytes, duplicate_chunk,
    corrupt_length, corrupt_vr, bogus_transfer_syntax, pixel_length, delete_element,
    weird_value, weird_value, insert_tag, damage_sequence, delete_element,
)  # fmt: skip


# -- running -------------------------------------------------------------------------------


@dataclass
class Failure:
    """One input that broke the invariant."""

    index: int
    seed_file: str
    mutations: list[str]
    error: str
    trace: str


@dataclass
class FuzzResult:
    count: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"inputs: {self.count}  (each read as a file and as a Dataset)",
            f"time: {self.seconds:.1f} s ({1000 * self.seconds / max(self.count, 1):.1f} ms/input)",
            f"invariant broken: {len(self.failures)}",
            "outcomes:",
        ]
        lines += [f"  {k:20s} {v}" for k, v in sorted(self.outcomes.items(), key=lambda x: -x[1])]
        for failure in self.failures[:20]:
            lines.append(
                f"FAIL #{failure.index} {failure.seed_file} {'+'.join(failure.mutations)}: "
                f"{failure.error}"
            )
        return "\n".join(lines)


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: object) -> None:
        raise FuzzTimeout(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _outcome(source: Path | Dataset, rules: GateRules) -> str:
    """``ok`` or the reason code; anything else propagates as an invariant failure."""
    try:
        check(read_radiograph(source), rules)
    except AnaxReportError as exc:
        message = str(exc)
        if "\n" in message or not message:
            raise AssertionError(f"message not one line: {message!r}") from exc
        return exc.reason
    return "ok"


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    names = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        mutator = rng.choice(MUTATORS)
        if data:
            try:
                data = mutator(data, rng)
            except Exception:  # a data-set mutator met bytes pydicom cannot handle: flip bits
                data, mutator = flip_bits(data, rng), flip_bits
        names.append(mutator.__name__)
    return data, names


def fuzz(
    count: int,
    seed: int,
    *,
    corpus: Sequence[tuple[str, bytes]] | None = None,
    time_limit: float = 10.0,
    save: Path | None = None,
    only: int | None = None,
    progress: bool = False,
) -> FuzzResult:
    """Run ``count`` mutated inputs (input ``i`` from ``Random(f"{seed}:{i}")``)."""
    corpus = corpus if corpus is not None else build_corpus()
    result = FuzzResult()
    start = time.perf_counter()
    indices = [only] if only is not None else range(count)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on every corrupt value
        path = Path(folder) / "input.dcm"
        for n, index in enumerate(indices):
            rng = random.Random(f"{seed}:{index}")
            seed_file, original = corpus[rng.randrange(len(corpus))]
            data, names = mutate(original, rng)
            path.write_bytes(data)
            rules = rng.choice(RULES)
            try:
                with _time_limit(time_limit):
                    result.outcomes[_outcome(path, rules)] += 1
                    dataset = _parse(data)
                    if dataset is not None:
                        result.outcomes[f"dataset:{_outcome(dataset, rules)}"] += 1
            except (Exception, FuzzTimeout) as exc:  # the invariant's breach
                trace = "".join(traceback.format_exception(exc)[-6:])
                result.failures.append(
                    Failure(index, seed_file, names, f"{type(exc).__name__}: {exc}"[:300], trace)
                )
                result.outcomes["FAILED"] += 1
                if save is not None:
                    save.mkdir(parents=True, exist_ok=True)
                    (save / f"seed{seed}-{index}.dcm").write_bytes(data)
                    (save / f"seed{seed}-{index}.txt").write_text(trace)
            result.count += 1
            if progress and (n + 1) % 500 == 0:
                elapsed = time.perf_counter() - start
                print(f"{n + 1} inputs, {len(result.failures)} failures, {elapsed:.0f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
    result.seconds = time.perf_counter() - start
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="inputs to run (default 1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per input")
    parser.add_argument("--save", type=Path, help="folder for the inputs that fail")
    parser.add_argument("--only", type=int, help="run input number ONLY alone (reproduce)")
    parser.add_argument("--progress", action="store_true", help="a line every 500 inputs")
    args = parser.parse_args(argv)
    pydicom_logger = logging.getLogger("pydicom")
    level = pydicom_logger.level
    pydicom_logger.setLevel(logging.CRITICAL)  # it logs every corrupt value
    try:
        return _run(args)
    finally:
        pydicom_logger.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    corpus = build_corpus()
    print(f"corpus: {len(corpus)} files: {', '.join(name for name, _ in corpus)}")
    result = fuzz(
        args.count,
        args.seed,
        corpus=corpus,
        time_limit=args.time_limit,
        save=args.save,
        only=args.only,
        progress=args.progress,
    )
    print(f"seed: {args.seed}")
    print(result.summary())
    for failure in result.failures[:5]:
        print(f"--- #{failure.index}\n{failure.trace}")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
