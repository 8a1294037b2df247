"""Codec round trips and refusals."""

from __future__ import annotations

import contextlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from shardmill.errors import ProtocolError, VersionMismatch
from shardmill.master.jobs import accept
from shardmill.master.workers import DoneHead
from shardmill.ops.registry import NO_MODULES
from shardmill.wire.codec import (
    bundle,
    bundles,
    decode,
    encode,
    encode_header,
    pack_value,
    unbundle,
    unpack_header,
    unpack_value,
)
from shardmill.wire.protocol import (
    BatchShard,
    Heartbeat,
    Lease,
    ShardAttempt,
    ShardDone,
    ShmRef,
    Submit,
    Task,
)
from shardmill.wire.spec import JobSpec, MapChunk
from shardmill.worker.runner import TaskHead, task_leases


def _round_trip(value: object) -> object:
    packed = pack_value(value)
    msg = ShardDone(job_id="j", shard=0, attempt=1, payload=packed.data)
    frames = [bytes(f) for f in encode(msg, packed.arrays)]
    decoded = decode(frames)
    assert decoded.msg == msg
    return unpack_value(decoded.msg.payload, decoded.arrays)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(dtype=hnp.scalar_dtypes(), shape=hnp.array_shapes(min_dims=0, min_side=0)))
def test_arrays_round_trip_any_dtype_and_shape(arr: np.ndarray) -> None:
    got = _round_trip({"a": arr})["a"]  # type: ignore[index]
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)


def test_non_contiguous_empty_and_zero_d_arrays() -> None:
    base = np.arange(60, dtype=np.float64).reshape(3, 4, 5)
    cases = [
        base[:, ::2, 1:],
        base.T,
        np.zeros((0, 7), dtype=np.int8),
        np.array(3.5),
        np.asfortranarray(base),
        np.array([True, False]),
    ]
    got = _round_trip(cases)
    for want, have in zip(cases, got, strict=True):  # type: ignore[call-overload]
        assert have.shape == want.shape and have.dtype == want.dtype
        np.testing.assert_array_equal(have, want)


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats(allow_nan=False)
        | st.text()
        | st.binary(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    )
)
def test_plain_values_round_trip(value: object) -> None:
    assert _round_trip(value) == value


def test_tuples_and_numpy_scalars_become_plain_values() -> None:
    assert _round_trip((1, np.int64(2), np.float32(0.5))) == [1, 2, 0.5]


def test_pickle_is_never_used_for_unknown_objects() -> None:
    with pytest.raises(TypeError, match="no pickle"):
        pack_value({"x": object()})
    with pytest.raises(TypeError, match="object arrays"):
        pack_value(np.array([object()]))


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=80), min_size=0, max_size=4))
def test_any_bytes_decode_to_a_message_or_a_protocol_error(frames: list[bytes]) -> None:
    with contextlib.suppress(ProtocolError):
        decode(frames)


def test_version_mismatch_names_both_versions() -> None:
    with pytest.raises(VersionMismatch, match=r"version 7.*speaks 1"):
        decode([msgpack.packb({"v": 7, "kind": "jobs"})])


def test_invalid_fields_are_named() -> None:
    raw = {"v": 1, "kind": "submit", "spec": {"op": "column_stats", "shards": -1}}
    with pytest.raises(ProtocolError, match=r"spec\.shards"):
        decode([msgpack.packb(raw)])


def test_array_references_are_checked_against_frames() -> None:
    packed = pack_value(np.arange(4, dtype=np.int64))
    with pytest.raises(ProtocolError, match="missing"):
        unpack_value(packed.data, [])
    with pytest.raises(ProtocolError, match="holds 3 bytes"):
        unpack_value(packed.data, [b"abc"])
    with pytest.raises(ProtocolError, match="extension type 9"):
        unpack_value(msgpack.packb(msgpack.ExtType(9, b"")), [])


def test_messages_are_frozen_and_strict() -> None:
    spec = JobSpec(op="map", function="m:f")
    with pytest.raises(ValueError):
        Submit(spec=spec, unexpected=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        spec.op = "x"  # type: ignore[misc]


def _done(shard: int, value: object) -> list[object]:
    packed = pack_value(value)
    msg = ShardDone(job_id="j", shard=shard, attempt=1, payload=packed.data)
    return encode(msg, packed.arrays)  # type: ignore[return-value]


def test_a_bundle_carries_messages_with_their_arrays_in_order() -> None:
    parts = [_done(0, np.arange(3)), encode(Heartbeat()), _done(2, {"a": np.ones((2, 2))})]
    frames = bundle(parts)
    assert len(frames) == 1 + sum(len(p) for p in parts)
    got = [decode(p) for p in unbundle(frames)]
    assert [d.msg.kind for d in got] == ["done", "heartbeat", "done"]
    assert unpack_value(got[0].msg.payload, got[0].arrays).tolist() == [0, 1, 2]  # type: ignore[union-attr]
    assert unpack_value(got[2].msg.payload, got[2].arrays)["a"].shape == (2, 2)  # type: ignore[union-attr]
    # A single message travels as it is, and a plain message unbundles to itself
    assert bundle(parts[1:2]) == parts[1]
    assert unbundle(parts[0]) == [parts[0]]


def test_bundles_keep_order_within_their_limits() -> None:
    parts = [_done(i, b"x" * 100) for i in range(10)] + [_done(10, b"y" * 5000)]
    sent = list(bundles(parts, max_parts=4, max_bytes=1000))
    got = [decode(p).msg for frames in sent for p in unbundle(frames)]
    assert [m.shard for m in got] == list(range(11))  # type: ignore[union-attr]
    assert [len(unbundle(f)) for f in sent] == [4, 4, 2, 1]  # the big one alone


def test_bad_bundles_are_refused_by_what_is_wrong() -> None:
    header = {"kind": "bundle", "v": 1, "counts": [1, 2]}
    with pytest.raises(ProtocolError, match="adding up to the 2 frames"):
        unbundle([msgpack.packb(header), b"a", b"b"])
    with pytest.raises(ProtocolError, match="adding up"):
        unbundle([msgpack.packb({**header, "counts": [0, 2]}), b"a", b"b"])
    with pytest.raises(VersionMismatch, match="version 3"):
        unbundle([msgpack.packb({**header, "v": 3}), b"a", b"b", b"c"])
    with pytest.raises(ProtocolError, match="do not nest"):
        decode(unbundle(bundle([bundle([encode(Heartbeat()), encode(Heartbeat())]), [b"x"]]))[0])


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=4), st.lists(st.integers(-2, 5)))
def test_any_bundle_header_splits_or_is_a_protocol_error(
    rest: list[bytes], counts: list[int]
) -> None:
    frames = [msgpack.packb({"kind": "bundle", "v": 1, "counts": counts}), *rest]
    with contextlib.suppress(ProtocolError):
        parts = unbundle(frames)
        assert [len(p) for p in parts] == counts


def test_the_masters_hand_built_tasks_are_the_task_model_exactly(tmp_path: Path) -> None:
    """The master builds each Task header as plain data (master/jobs.py): the worker must read
    it as the very Task the model would have made, for map and dataset jobs, batches and
    shared-memory references."""
    np.save(tmp_path / "d.npy", np.arange(60.0).reshape(20, 3))
    dataset = JobSpec(op="column_stats", dataset=str(tmp_path / "d.npy"), shards=4)
    packed = pack_value([(1, np.arange(3))])
    mapping = Submit(
        spec=JobSpec(op="map", function="m:f"),
        parts=[packed.data] * 2,
        part_counts=[1, 1],
        part_arrays=[1, 1],
    )
    cases = [
        (accept(mapping, packed.arrays * 2, NO_MODULES), "map", (), None),
        (accept(Submit(spec=dataset), [], NO_MODULES), "column_stats", ((1, 2), (2, 1)), 1.5),
    ]
    ref = ShmRef(frame=0, segment="s", offset=8, size=24)
    for data, op, more, timeout in cases:
        header, arrays = data.task("j1", 0, 3, op=op, timeout=timeout, more=more)
        for h in (header, data.with_refs(header, [ref])):
            task = decode(encode_header(h, arrays)).msg
            assert isinstance(task, Task)
            assert _plain(task.model_dump(mode="python")) == _plain(h)
        assert task.more_attempts() == [ShardAttempt(shard=s, attempt=a) for s, a in more]
        assert task.descriptor == data.descriptors[0]
        assert task.timeout == (None if timeout is None else timeout * (1 + len(more)))


def _plain(header: dict[str, object]) -> object:
    """A header as it travels (tuples and lists alike)."""
    return msgpack.unpackb(msgpack.packb(header))


def test_the_agents_light_read_of_a_task_agrees_with_the_model_and_refuses_bad_fields() -> None:
    batch = [
        BatchShard(shard=s, attempt=a, descriptor=MapChunk(function="m:f", count=1))
        for s, a in ((4, 1), (5, 2))
    ]
    task = Task(
        job_id="j",
        shard=3,
        attempt=2,
        op="map",
        timeout=1.5,
        descriptor=MapChunk(function="m:f", count=1),
        more=batch,
    )
    header = unpack_header(encode(task)[0])
    head = TaskHead.read(header)
    assert (head.job_id, head.shard, head.attempt, head.timeout) == ("j", 3, 2, 1.5)
    assert head.more_attempts() == task.more_attempts()
    assert task_leases(head) == [
        Lease(job_id="j", shard=s, attempt=a) for s, a in ((3, 2), (4, 1), (5, 2))
    ]
    for field, bad in (("shard", "3"), ("attempt", True), ("job_id", 7), ("timeout", "x")):
        with pytest.raises(ProtocolError, match=f"invalid 'task' message: .*{bad!r}"):
            TaskHead.read({**header, field: bad})
    with pytest.raises(ProtocolError, match="job_id"):
        TaskHead.read({k: v for k, v in header.items() if k != "job_id"})


def test_the_masters_light_read_of_a_result_is_the_model_exactly() -> None:
    done = ShardDone(job_id="j", shard=3, attempt=2, duration=0.5, payload=b"\x91\x05")
    frames = encode(done)
    assert DoneHead.read(frames) == DoneHead("j", 3, 2, 0.5, b"\x91\x05")
    # A batch, a failure, and a field of another type are left to the full decode
    batch = done.model_copy(update={"more": [ShardAttempt(shard=4, attempt=1)]})
    assert DoneHead.read(encode(batch)) is None
    assert DoneHead.read([msgpack.packb({**unpack_header(frames[0]), "shard": True})]) is None


_ANY = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.lists(st.fixed_dictionaries({"shard": st.integers(-1, 2), "attempt": st.integers(0, 2)})),
)
_RESULT = st.fixed_dictionaries(  # what a worker sends
    {
        "v": st.just(1),
        "kind": st.just("done"),
        "job_id": st.text(max_size=4),
        "shard": st.integers(0, 9),
        "attempt": st.integers(1, 3),
    },
    optional={
        "duration": st.floats(0, 9) | st.integers(0, 9),
        "payload": st.binary(max_size=4),
        "more": st.just([]),
    },
)
_NAMES = ["v", "kind", "job_id", "shard", "attempt", "duration", "payload", "more", "extra"]


@given(_RESULT, st.sampled_from(_NAMES), st.none() | _ANY | st.sampled_from(["failed", 2]))
def test_a_result_read_lightly_is_what_decode_reads_or_is_left_to_it(
    header: dict[str, object], name: str, value: object
) -> None:
    """A result as a worker sends it, with one field changed, added or (None) removed."""
    changed = {k: v for k, v in header.items() if k != name}
    if value is not None:
        changed[name] = value
    frames = [msgpack.packb(changed)]
    head = DoneHead.read(frames)
    try:
        msg = decode(frames).msg
    except ProtocolError:  # refused in full: the light read must not have taken it
        assert head is None
        return
    if head is not None:
        assert isinstance(msg, ShardDone) and not msg.more
        assert head == DoneHead(msg.job_id, msg.shard, msg.attempt, msg.duration, msg.payload)
        assert type(head.duration) is float
