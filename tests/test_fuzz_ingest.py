"""A short run of the ingest + gate fuzzer (tests/fuzz_ingest.py) in the normal suite.

The long runs are the script's job (``python tests/fuzz_ingest.py --count 10000 --seed 1``);
this keeps the invariant checked on every change: a few hundred mutated inputs, each yielding
a gated radiograph or an AnaxReportError with a one-line message, in a few seconds.
"""

from __future__ import annotations

import pytest
from fuzz_ingest import FuzzResult, build_corpus, fuzz, main


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, bytes]]:
    return build_corpus()


def test_corpus_covers_the_transfer_syntaxes(corpus: list[tuple[str, bytes]]) -> None:
    names = {name for name, _ in corpus}
    assert {"implicit-le", "big-endian-signed", "deflated", "rle", "j2k", "jpeg-ls"} <= names
    assert {"pa_normal", "luts-sequences"} <= names


def test_short_fuzz_run_keeps_the_invariant(corpus: list[tuple[str, bytes]]) -> None:
    result = fuzz(300, seed=2026, corpus=corpus, time_limit=10.0)
    assert isinstance(result, FuzzResult) and result.count == 300
    assert not result.failures, result.summary()
    assert result.outcomes["ok"] > 0 and len(result.outcomes) >= 8, result.outcomes


def test_script_reproduces_one_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--count", "5", "--seed", "3", "--only", "4"]) == 0
    out = capsys.readouterr().out
    assert "inputs: 1" in out and "invariant broken: 0" in out and "seed: 3" in out


hypothesis = pytest.importorskip("hypothesis", reason="hypothesis (test extra) drives the edits")
st = hypothesis.strategies
_EDIT = st.tuples(st.integers(min_value=0, max_value=2**31), st.binary(min_size=1, max_size=12))


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True, database=None)
@hypothesis.given(
    index=st.integers(min_value=0, max_value=10**6),
    edits=st.lists(_EDIT, max_size=4),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=2**31)),
)
def test_byte_edits_chosen_by_hypothesis_keep_the_invariant(
    corpus: list[tuple[str, bytes]], index: int, edits: list[tuple[int, bytes]], cut: int | None
) -> None:
    """Hypothesis picks the file, overwrites and a cut, and shrinks any failure to a minimum."""
    import io
    import warnings

    import pydicom

    from anaxreport.errors import AnaxReportError
    from anaxreport.gate import check
    from anaxreport.ingest import read_radiograph

    _, original = corpus[index % len(corpus)]
    data = bytearray(original)
    for position, junk in edits:
        at = position % len(data)
        data[at : at + len(junk)] = junk
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            source = pydicom.dcmread(io.BytesIO(bytes(data)), force=True)
        except Exception:  # pydicom cannot even build a Dataset: nothing to hand to ingest
            return
        try:
            check(read_radiograph(source))
        except AnaxReportError as exc:
            assert "\n" not in str(exc) and exc.reason
