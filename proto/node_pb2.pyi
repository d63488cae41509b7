from proto import session_pb2 as _session_pb2
from proto import ledger_pb2 as _ledger_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LegKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEG_KIND_UNSPECIFIED: _ClassVar[LegKind]
    LEG_CREDIT: _ClassVar[LegKind]
    LEG_RESERVE: _ClassVar[LegKind]
    LEG_POST: _ClassVar[LegKind]
    LEG_RELEASE: _ClassVar[LegKind]

class MoveRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MOVE_ROLE_UNSPECIFIED: _ClassVar[MoveRole]
    EXPORTING: _ClassVar[MoveRole]
    FROZEN: _ClassVar[MoveRole]
    IMPORTING: _ClassVar[MoveRole]
    IMPORTED: _ClassVar[MoveRole]
LEG_KIND_UNSPECIFIED: LegKind
LEG_CREDIT: LegKind
LEG_RESERVE: LegKind
LEG_POST: LegKind
LEG_RELEASE: LegKind
MOVE_ROLE_UNSPECIFIED: MoveRole
EXPORTING: MoveRole
FROZEN: MoveRole
IMPORTING: MoveRole
IMPORTED: MoveRole

class SlotOwnership(_message.Message):
    __slots__ = ("slot", "epoch", "owner", "owned", "followers", "seq_epoch", "seq", "following")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    OWNED_FIELD_NUMBER: _ClassVar[int]
    FOLLOWERS_FIELD_NUMBER: _ClassVar[int]
    SEQ_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FOLLOWING_FIELD_NUMBER: _ClassVar[int]
    slot: int
    epoch: int
    owner: str
    owned: bool
    followers: _containers.RepeatedScalarFieldContainer[str]
    seq_epoch: int
    seq: int
    following: bool
    def __init__(self, slot: _Optional[int] = ..., epoch: _Optional[int] = ..., owner: _Optional[str] = ..., owned: _Optional[bool] = ..., followers: _Optional[_Iterable[str]] = ..., seq_epoch: _Optional[int] = ..., seq: _Optional[int] = ..., following: _Optional[bool] = ...) -> None: ...

class GetSlotsRequest(_message.Message):
    __slots__ = ("summary",)
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    summary: bool
    def __init__(self, summary: _Optional[bool] = ...) -> None: ...

class GetSlotsResponse(_message.Message):
    __slots__ = ("node_id", "slots_total", "map_version", "slots", "moves", "cluster_id", "controller_term", "zone", "owned_count", "following_count", "books", "spiffe_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    MOVES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_TERM_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    OWNED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FOLLOWING_COUNT_FIELD_NUMBER: _ClassVar[int]
    BOOKS_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    slots_total: int
    map_version: int
    slots: _containers.RepeatedCompositeFieldContainer[SlotOwnership]
    moves: _containers.RepeatedCompositeFieldContainer[SlotMove]
    cluster_id: str
    controller_term: int
    zone: str
    owned_count: int
    following_count: int
    books: Books
    spiffe_id: str
    def __init__(self, node_id: _Optional[str] = ..., slots_total: _Optional[int] = ..., map_version: _Optional[int] = ..., slots: _Optional[_Iterable[_Union[SlotOwnership, _Mapping]]] = ..., moves: _Optional[_Iterable[_Union[SlotMove, _Mapping]]] = ..., cluster_id: _Optional[str] = ..., controller_term: _Optional[int] = ..., zone: _Optional[str] = ..., owned_count: _Optional[int] = ..., following_count: _Optional[int] = ..., books: _Optional[_Union[Books, _Mapping]] = ..., spiffe_id: _Optional[str] = ...) -> None: ...

class Books(_message.Message):
    __slots__ = ("debits", "credits", "position", "imbalance", "legs_in_flight")
    DEBITS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    IMBALANCE_FIELD_NUMBER: _ClassVar[int]
    LEGS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    debits: str
    credits: str
    position: str
    imbalance: str
    legs_in_flight: int
    def __init__(self, debits: _Optional[str] = ..., credits: _Optional[str] = ..., position: _Optional[str] = ..., imbalance: _Optional[str] = ..., legs_in_flight: _Optional[int] = ...) -> None: ...

class AssignSlotsRequest(_message.Message):
    __slots__ = ("map_version", "self_address", "slots", "base_map_version", "controller_term", "cluster_id", "node_id", "drop_released", "down_nodes", "spiffe_ids")
    class SpiffeIdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    SELF_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    BASE_MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_TERM_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DROP_RELEASED_FIELD_NUMBER: _ClassVar[int]
    DOWN_NODES_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_IDS_FIELD_NUMBER: _ClassVar[int]
    map_version: int
    self_address: str
    slots: _containers.RepeatedCompositeFieldContainer[SlotOwnership]
    base_map_version: int
    controller_term: int
    cluster_id: str
    node_id: str
    drop_released: bool
    down_nodes: _containers.RepeatedScalarFieldContainer[str]
    spiffe_ids: _containers.ScalarMap[str, str]
    def __init__(self, map_version: _Optional[int] = ..., self_address: _Optional[str] = ..., slots: _Optional[_Iterable[_Union[SlotOwnership, _Mapping]]] = ..., base_map_version: _Optional[int] = ..., controller_term: _Optional[int] = ..., cluster_id: _Optional[str] = ..., node_id: _Optional[str] = ..., drop_released: _Optional[bool] = ..., down_nodes: _Optional[_Iterable[str]] = ..., spiffe_ids: _Optional[_Mapping[str, str]] = ...) -> None: ...

class NodeSpiffeIds(_message.Message):
    __slots__ = ("by_address",)
    class ByAddressEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    by_address: _containers.ScalarMap[str, str]
    def __init__(self, by_address: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AssignSlotsResponse(_message.Message):
    __slots__ = ("slots_owned",)
    SLOTS_OWNED_FIELD_NUMBER: _ClassVar[int]
    slots_owned: int
    def __init__(self, slots_owned: _Optional[int] = ...) -> None: ...

class CreditLeg(_message.Message):
    __slots__ = ("kind", "debit_account_id", "transfer_id", "credit_account_id", "ledger", "amount", "reserved", "pending_id", "event")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEBIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    PENDING_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    kind: LegKind
    debit_account_id: str
    transfer_id: str
    credit_account_id: str
    ledger: int
    amount: int
    reserved: int
    pending_id: str
    event: _ledger_pb2.Transfer
    def __init__(self, kind: _Optional[_Union[LegKind, str]] = ..., debit_account_id: _Optional[str] = ..., transfer_id: _Optional[str] = ..., credit_account_id: _Optional[str] = ..., ledger: _Optional[int] = ..., amount: _Optional[int] = ..., reserved: _Optional[int] = ..., pending_id: _Optional[str] = ..., event: _Optional[_Union[_ledger_pb2.Transfer, _Mapping]] = ...) -> None: ...

class ApplyCreditLegsRequest(_message.Message):
    __slots__ = ("legs", "fence")
    LEGS_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    legs: _containers.RepeatedCompositeFieldContainer[CreditLeg]
    fence: _ledger_pb2.Fence
    def __init__(self, legs: _Optional[_Iterable[_Union[CreditLeg, _Mapping]]] = ..., fence: _Optional[_Union[_ledger_pb2.Fence, _Mapping]] = ...) -> None: ...

class ApplyCreditLegsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_ledger_pb2.EventResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_ledger_pb2.EventResult, _Mapping]]] = ...) -> None: ...

class AppliedLeg(_message.Message):
    __slots__ = ("leg", "code", "timestamp", "resolved_by", "resolved_kind")
    LEG_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_BY_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_KIND_FIELD_NUMBER: _ClassVar[int]
    leg: CreditLeg
    code: _ledger_pb2.ResultCode
    timestamp: int
    resolved_by: str
    resolved_kind: LegKind
    def __init__(self, leg: _Optional[_Union[CreditLeg, _Mapping]] = ..., code: _Optional[_Union[_ledger_pb2.ResultCode, str]] = ..., timestamp: _Optional[int] = ..., resolved_by: _Optional[str] = ..., resolved_kind: _Optional[_Union[LegKind, str]] = ...) -> None: ...

class SlotMove(_message.Message):
    __slots__ = ("slot", "migration_id", "role", "peer", "last_seq", "digest")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    slot: int
    migration_id: str
    role: MoveRole
    peer: str
    last_seq: int
    digest: int
    def __init__(self, slot: _Optional[int] = ..., migration_id: _Optional[str] = ..., role: _Optional[_Union[MoveRole, str]] = ..., peer: _Optional[str] = ..., last_seq: _Optional[int] = ..., digest: _Optional[int] = ...) -> None: ...

class PrepareImportRequest(_message.Message):
    __slots__ = ("migration_id", "slot", "source", "controller_term")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_TERM_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    slot: int
    source: str
    controller_term: int
    def __init__(self, migration_id: _Optional[str] = ..., slot: _Optional[int] = ..., source: _Optional[str] = ..., controller_term: _Optional[int] = ...) -> None: ...

class PrepareImportResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KeyOp(_message.Message):
    __slots__ = ("key", "value", "deleted")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    deleted: bool
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., deleted: _Optional[bool] = ...) -> None: ...

class SlotChunk(_message.Message):
    __slots__ = ("migration_id", "slot", "seq", "ops", "last", "digest")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    slot: int
    seq: int
    ops: _containers.RepeatedCompositeFieldContainer[KeyOp]
    last: bool
    digest: int
    def __init__(self, migration_id: _Optional[str] = ..., slot: _Optional[int] = ..., seq: _Optional[int] = ..., ops: _Optional[_Iterable[_Union[KeyOp, _Mapping]]] = ..., last: _Optional[bool] = ..., digest: _Optional[int] = ...) -> None: ...

class ImportSlotResponse(_message.Message):
    __slots__ = ("last_seq", "digest", "keys")
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    last_seq: int
    digest: int
    keys: int
    def __init__(self, last_seq: _Optional[int] = ..., digest: _Optional[int] = ..., keys: _Optional[int] = ...) -> None: ...

class StartExportRequest(_message.Message):
    __slots__ = ("migration_id", "slot", "target", "controller_term")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_TERM_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    slot: int
    target: str
    controller_term: int
    def __init__(self, migration_id: _Optional[str] = ..., slot: _Optional[int] = ..., target: _Optional[str] = ..., controller_term: _Optional[int] = ...) -> None: ...

class StartExportResponse(_message.Message):
    __slots__ = ("keys", "bytes", "seq")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    keys: int
    bytes: int
    seq: int
    def __init__(self, keys: _Optional[int] = ..., bytes: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class FreezeSlotRequest(_message.Message):
    __slots__ = ("migration_id", "slot", "controller_term")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_TERM_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    slot: int
    controller_term: int
    def __init__(self, migration_id: _Optional[str] = ..., slot: _Optional[int] = ..., controller_term: _Optional[int] = ...) -> None: ...

class FreezeSlotResponse(_message.Message):
    __slots__ = ("last_seq", "digest")
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    last_seq: int
    digest: int
    def __init__(self, last_seq: _Optional[int] = ..., digest: _Optional[int] = ...) -> None: ...

class AbortMoveRequest(_message.Message):
    __slots__ = ("migration_id", "slot", "controller_term")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_TERM_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    slot: int
    controller_term: int
    def __init__(self, migration_id: _Optional[str] = ..., slot: _Optional[int] = ..., controller_term: _Optional[int] = ...) -> None: ...

class AbortMoveResponse(_message.Message):
    __slots__ = ("was_active",)
    WAS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    was_active: bool
    def __init__(self, was_active: _Optional[bool] = ...) -> None: ...

class ReplicaEntry(_message.Message):
    __slots__ = ("slot", "epoch", "seq", "ops")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    slot: int
    epoch: int
    seq: int
    ops: _containers.RepeatedCompositeFieldContainer[KeyOp]
    def __init__(self, slot: _Optional[int] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., ops: _Optional[_Iterable[_Union[KeyOp, _Mapping]]] = ...) -> None: ...

class ReplicateRequest(_message.Message):
    __slots__ = ("primary", "lease_ms", "entries", "clock_ns", "lease_slots", "lease_epochs")
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CLOCK_NS_FIELD_NUMBER: _ClassVar[int]
    LEASE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    primary: str
    lease_ms: int
    entries: _containers.RepeatedCompositeFieldContainer[ReplicaEntry]
    clock_ns: int
    lease_slots: _containers.RepeatedScalarFieldContainer[int]
    lease_epochs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, primary: _Optional[str] = ..., lease_ms: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[ReplicaEntry, _Mapping]]] = ..., clock_ns: _Optional[int] = ..., lease_slots: _Optional[_Iterable[int]] = ..., lease_epochs: _Optional[_Iterable[int]] = ...) -> None: ...

class ReplicaResult(_message.Message):
    __slots__ = ("ok", "refusal")
    OK_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    refusal: str
    def __init__(self, ok: _Optional[bool] = ..., refusal: _Optional[str] = ...) -> None: ...

class ReplicateResponse(_message.Message):
    __slots__ = ("results", "refused_leases")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_LEASES_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ReplicaResult]
    refused_leases: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, results: _Optional[_Iterable[_Union[ReplicaResult, _Mapping]]] = ..., refused_leases: _Optional[_Iterable[int]] = ...) -> None: ...

class SilentFollowersRequest(_message.Message):
    __slots__ = ("silent_after_ms",)
    SILENT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    silent_after_ms: int
    def __init__(self, silent_after_ms: _Optional[int] = ...) -> None: ...

class SilentFollowersResponse(_message.Message):
    __slots__ = ("followers",)
    FOLLOWERS_FIELD_NUMBER: _ClassVar[int]
    followers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, followers: _Optional[_Iterable[str]] = ...) -> None: ...

class HoldCreditLegsRequest(_message.Message):
    __slots__ = ("backup_id", "hold_ms")
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    HOLD_MS_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    hold_ms: int
    def __init__(self, backup_id: _Optional[str] = ..., hold_ms: _Optional[int] = ...) -> None: ...

class HoldCreditLegsResponse(_message.Message):
    __slots__ = ("waited_ms",)
    WAITED_MS_FIELD_NUMBER: _ClassVar[int]
    waited_ms: int
    def __init__(self, waited_ms: _Optional[int] = ...) -> None: ...

class SlotVersion(_message.Message):
    __slots__ = ("slot", "epoch", "seq_epoch", "seq", "replicated", "digest")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REPLICATED_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    slot: int
    epoch: int
    seq_epoch: int
    seq: int
    replicated: bool
    digest: int
    def __init__(self, slot: _Optional[int] = ..., epoch: _Optional[int] = ..., seq_epoch: _Optional[int] = ..., seq: _Optional[int] = ..., replicated: _Optional[bool] = ..., digest: _Optional[int] = ...) -> None: ...

class CutSlotsRequest(_message.Message):
    __slots__ = ("backup_id", "previous")
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    previous: _containers.RepeatedCompositeFieldContainer[SlotVersion]
    def __init__(self, backup_id: _Optional[str] = ..., previous: _Optional[_Iterable[_Union[SlotVersion, _Mapping]]] = ...) -> None: ...

class CutSlotsResponse(_message.Message):
    __slots__ = ("slots", "unchanged", "clock_ns", "node_id")
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    CLOCK_NS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    slots: _containers.RepeatedCompositeFieldContainer[SlotVersion]
    unchanged: _containers.RepeatedScalarFieldContainer[int]
    clock_ns: int
    node_id: str
    def __init__(self, slots: _Optional[_Iterable[_Union[SlotVersion, _Mapping]]] = ..., unchanged: _Optional[_Iterable[int]] = ..., clock_ns: _Optional[int] = ..., node_id: _Optional[str] = ...) -> None: ...

class ReleaseCreditLegsRequest(_message.Message):
    __slots__ = ("backup_id",)
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    def __init__(self, backup_id: _Optional[str] = ...) -> None: ...

class ReleaseCreditLegsResponse(_message.Message):
    __slots__ = ("was_held",)
    WAS_HELD_FIELD_NUMBER: _ClassVar[int]
    was_held: bool
    def __init__(self, was_held: _Optional[bool] = ...) -> None: ...

class ReadCutRequest(_message.Message):
    __slots__ = ("backup_id", "slots")
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    slots: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, backup_id: _Optional[str] = ..., slots: _Optional[_Iterable[int]] = ...) -> None: ...

class BackupChunk(_message.Message):
    __slots__ = ("slot", "ops", "last", "keys", "digest", "unchanged")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    slot: int
    ops: _containers.RepeatedCompositeFieldContainer[KeyOp]
    last: bool
    keys: int
    digest: int
    unchanged: bool
    def __init__(self, slot: _Optional[int] = ..., ops: _Optional[_Iterable[_Union[KeyOp, _Mapping]]] = ..., last: _Optional[bool] = ..., keys: _Optional[int] = ..., digest: _Optional[int] = ..., unchanged: _Optional[bool] = ...) -> None: ...

class RestoreChunk(_message.Message):
    __slots__ = ("slot", "ops", "last", "keys", "digest", "clock_ns")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CLOCK_NS_FIELD_NUMBER: _ClassVar[int]
    slot: int
    ops: _containers.RepeatedCompositeFieldContainer[KeyOp]
    last: bool
    keys: int
    digest: int
    clock_ns: int
    def __init__(self, slot: _Optional[int] = ..., ops: _Optional[_Iterable[_Union[KeyOp, _Mapping]]] = ..., last: _Optional[bool] = ..., keys: _Optional[int] = ..., digest: _Optional[int] = ..., clock_ns: _Optional[int] = ...) -> None: ...

class RestoreSlotResponse(_message.Message):
    __slots__ = ("keys", "slots")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    keys: int
    slots: int
    def __init__(self, keys: _Optional[int] = ..., slots: _Optional[int] = ...) -> None: ...

class FinishRestoreRequest(_message.Message):
    __slots__ = ("slots",)
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    slots: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, slots: _Optional[_Iterable[int]] = ...) -> None: ...

class FinishRestoreResponse(_message.Message):
    __slots__ = ("slots_led", "outbox_entries")
    SLOTS_LED_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    slots_led: int
    outbox_entries: int
    def __init__(self, slots_led: _Optional[int] = ..., outbox_entries: _Optional[int] = ...) -> None: ...
