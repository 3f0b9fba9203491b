"""The spool's contract: durable, ordered, atomic moves; what a crash leaves is recoverable."""

from __future__ import annotations

import json

import pytest

from anaxreport.node.spool import Spool, safe_uid


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool", ("pacs",))


def test_accepted_instances_wait_in_arrival_order_under_their_uid(spool):
    uids = ["1.2.3.9", "1.2.3.10", "1.2.3.1"]
    items = [spool.accept(f"instance {uid}".encode(), uid) for uid in uids]
    assert [i.sop_instance_uid for i in spool.pending_items()] == uids
    assert [i.received_ns for i in items] == sorted({i.received_ns for i in items})
    assert items[0].path.read_bytes() == b"instance 1.2.3.9"
    assert spool.depth() == 3 and not any(spool.incoming.iterdir())


def test_a_uid_that_is_not_a_uid_never_becomes_a_path(spool):
    assert safe_uid("1.2.840.10008") == "1.2.840.10008"
    for bad in ("../../etc/passwd", "1.2.3/4", "", "1." + "2" * 70, "1..2"):
        assert safe_uid(bad) == "invalid"
    item = spool.accept(b"x", "../../evil")
    assert item.path.parent == spool.pending and item.sop_instance_uid == "invalid"


def test_recover_removes_only_half_written_files(spool):
    kept = spool.accept(b"acknowledged", "1.2.3")
    (spool.incoming / ".abc.part").write_bytes(b"half")
    assert spool.recover() == 1
    assert spool.pending_items() == [kept] and not any(spool.incoming.iterdir())


def test_finish_moves_the_input_with_its_note_and_drops_the_attempt_marker(spool):
    item = spool.accept(b"lateral", "1.2.3")
    assert [spool.start_attempt(item) for _ in range(3)] == [1, 2, 3]
    target = spool.finish(item, "refused", {"reason": "lateral-view"})
    assert target.read_bytes() == b"lateral" and target.parent.name == "refused"
    note = json.loads(target.with_name(f"{item.stem}.json").read_text())
    assert note == {"reason": "lateral-view"}
    assert not any(spool.pending.iterdir())  # marker gone with its input
    with pytest.raises(ValueError, match="outcome"):
        spool.finish(spool.accept(b"x", "1.2"), "lost")


def test_discard_deletes_a_reported_input(spool):
    item = spool.accept(b"x", "1.2.3")
    spool.start_attempt(item)
    spool.discard(item)
    assert not any(spool.pending.iterdir()) and not any((spool.root / "reported").iterdir())


def test_posting_the_same_result_twice_keeps_one_file(spool):
    spool.post("pacs", "0001-sr-1.2.3.dcm", b"first")
    spool.post("pacs", "0001-sr-1.2.3.dcm", b"same object again")
    spool.post("pacs", "0000-gsps-1.2.4.dcm", b"older input")
    queued = list(spool.queued("pacs"))
    assert [p.name for p in queued] == ["0000-gsps-1.2.4.dcm", "0001-sr-1.2.3.dcm"]
    assert queued[1].read_bytes() == b"same object again" and spool.outbox_depth("pacs") == 2
    dead = spool.bury("pacs", queued[0])
    assert dead.parent == spool.dead("pacs") and spool.outbox_depth("pacs") == 1
