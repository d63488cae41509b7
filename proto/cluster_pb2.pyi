from proto import node_pb2 as _node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    NODE_ACTIVE: _ClassVar[NodeState]
    NODE_JOINING: _ClassVar[NodeState]
    NODE_DRAINING: _ClassVar[NodeState]
    NODE_LOST: _ClassVar[NodeState]
    NODE_DOWN: _ClassVar[NodeState]
    NODE_STEPPED_DOWN: _ClassVar[NodeState]

class BooksState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BOOKS_STATE_UNSPECIFIED: _ClassVar[BooksState]
    BOOKS_BALANCED: _ClassVar[BooksState]
    BOOKS_IN_FLIGHT: _ClassVar[BooksState]
    BOOKS_UNBALANCED: _ClassVar[BooksState]
    BOOKS_UNKNOWN: _ClassVar[BooksState]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_RUNNING: _ClassVar[JobState]
    JOB_DONE: _ClassVar[JobState]
    JOB_FAILED: _ClassVar[JobState]
NODE_STATE_UNSPECIFIED: NodeState
NODE_ACTIVE: NodeState
NODE_JOINING: NodeState
NODE_DRAINING: NodeState
NODE_LOST: NodeState
NODE_DOWN: NodeState
NODE_STEPPED_DOWN: NodeState
BOOKS_STATE_UNSPECIFIED: BooksState
BOOKS_BALANCED: BooksState
BOOKS_IN_FLIGHT: BooksState
BOOKS_UNBALANCED: BooksState
BOOKS_UNKNOWN: BooksState
JOB_STATE_UNSPECIFIED: JobState
JOB_RUNNING: JobState
JOB_DONE: JobState
JOB_FAILED: JobState

class NodeInfo(_message.Message):
    __slots__ = ("address", "state", "id", "zone", "spiffe_id")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    address: str
    state: NodeState
    id: str
    zone: str
    spiffe_id: str
    def __init__(self, address: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ..., id: _Optional[str] = ..., zone: _Optional[str] = ..., spiffe_id: _Optional[str] = ...) -> None: ...

class ShardMap(_message.Message):
    __slots__ = ("version", "slots_total", "nodes", "slot_owner", "slot_epoch", "migrations", "controller_term", "cluster_id", "jobs", "slot_followers", "replicas")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SLOT_OWNER_FIELD_NUMBER: _ClassVar[int]
    SLOT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_TERM_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    SLOT_FOLLOWERS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    version: int
    slots_total: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    slot_owner: _containers.RepeatedScalarFieldContainer[int]
    slot_epoch: _containers.RepeatedScalarFieldContainer[int]
    migrations: _containers.RepeatedCompositeFieldContainer[Migration]
    controller_term: int
    cluster_id: str
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    slot_followers: _containers.RepeatedCompositeFieldContainer[SlotFollowers]
    replicas: int
    def __init__(self, version: _Optional[int] = ..., slots_total: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., slot_owner: _Optional[_Iterable[int]] = ..., slot_epoch: _Optional[_Iterable[int]] = ..., migrations: _Optional[_Iterable[_Union[Migration, _Mapping]]] = ..., controller_term: _Optional[int] = ..., cluster_id: _Optional[str] = ..., jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., slot_followers: _Optional[_Iterable[_Union[SlotFollowers, _Mapping]]] = ..., replicas: _Optional[int] = ...) -> None: ...

class SlotFollowers(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, nodes: _Optional[_Iterable[int]] = ...) -> None: ...

class Migration(_message.Message):
    __slots__ = ("id", "slot", "source", "target", "replaces")
    ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    id: str
    slot: int
    source: str
    target: str
    replaces: str
    def __init__(self, id: _Optional[str] = ..., slot: _Optional[int] = ..., source: _Optional[str] = ..., target: _Optional[str] = ..., replaces: _Optional[str] = ...) -> None: ...

class GetShardMapRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchShardMapRequest(_message.Message):
    __slots__ = ("known_version",)
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    known_version: int
    def __init__(self, known_version: _Optional[int] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("address", "state", "slots", "reachable", "slots_owned", "id", "reported_id", "follows", "zone", "books")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_OWNED_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REPORTED_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOWS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    BOOKS_FIELD_NUMBER: _ClassVar[int]
    address: str
    state: NodeState
    slots: int
    reachable: bool
    slots_owned: int
    id: str
    reported_id: str
    follows: int
    zone: str
    books: _node_pb2.Books
    def __init__(self, address: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ..., slots: _Optional[int] = ..., reachable: _Optional[bool] = ..., slots_owned: _Optional[int] = ..., id: _Optional[str] = ..., reported_id: _Optional[str] = ..., follows: _Optional[int] = ..., zone: _Optional[str] = ..., books: _Optional[_Union[_node_pb2.Books, _Mapping]] = ...) -> None: ...

class ClusterBooks(_message.Message):
    __slots__ = ("state", "debits", "credits", "legs_in_flight", "unbalanced_nodes", "unknown_nodes")
    STATE_FIELD_NUMBER: _ClassVar[int]
    DEBITS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    LEGS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    UNBALANCED_NODES_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_NODES_FIELD_NUMBER: _ClassVar[int]
    state: BooksState
    debits: str
    credits: str
    legs_in_flight: int
    unbalanced_nodes: _containers.RepeatedScalarFieldContainer[str]
    unknown_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, state: _Optional[_Union[BooksState, str]] = ..., debits: _Optional[str] = ..., credits: _Optional[str] = ..., legs_in_flight: _Optional[int] = ..., unbalanced_nodes: _Optional[_Iterable[str]] = ..., unknown_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("map_version", "slots_total", "nodes", "migrations", "jobs", "controller_term", "leader", "slots_without_copy", "cluster_id", "replicas", "slots_under_replicated", "books")
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    SLOTS_WITHOUT_COPY_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_UNDER_REPLICATED_FIELD_NUMBER: _ClassVar[int]
    BOOKS_FIELD_NUMBER: _ClassVar[int]
    map_version: int
    slots_total: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    migrations: _containers.RepeatedCompositeFieldContainer[Migration]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    controller_term: int
    leader: str
    slots_without_copy: _containers.RepeatedScalarFieldContainer[int]
    cluster_id: str
    replicas: int
    slots_under_replicated: int
    books: ClusterBooks
    def __init__(self, map_version: _Optional[int] = ..., slots_total: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., migrations: _Optional[_Iterable[_Union[Migration, _Mapping]]] = ..., jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., controller_term: _Optional[int] = ..., leader: _Optional[str] = ..., slots_without_copy: _Optional[_Iterable[int]] = ..., cluster_id: _Optional[str] = ..., replicas: _Optional[int] = ..., slots_under_replicated: _Optional[int] = ..., books: _Optional[_Union[ClusterBooks, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "kind", "node", "state", "slots_planned", "slots_moved", "moves_aborted", "started_unix_s", "finished_unix_s", "error", "freeze_ms_p50", "freeze_ms_p99", "freeze_ms_max")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_PLANNED_FIELD_NUMBER: _ClassVar[int]
    SLOTS_MOVED_FIELD_NUMBER: _ClassVar[int]
    MOVES_ABORTED_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FREEZE_MS_P50_FIELD_NUMBER: _ClassVar[int]
    FREEZE_MS_P99_FIELD_NUMBER: _ClassVar[int]
    FREEZE_MS_MAX_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    node: str
    state: JobState
    slots_planned: int
    slots_moved: int
    moves_aborted: int
    started_unix_s: float
    finished_unix_s: float
    error: str
    freeze_ms_p50: float
    freeze_ms_p99: float
    freeze_ms_max: float
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., node: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., slots_planned: _Optional[int] = ..., slots_moved: _Optional[int] = ..., moves_aborted: _Optional[int] = ..., started_unix_s: _Optional[float] = ..., finished_unix_s: _Optional[float] = ..., error: _Optional[str] = ..., freeze_ms_p50: _Optional[float] = ..., freeze_ms_p99: _Optional[float] = ..., freeze_ms_max: _Optional[float] = ...) -> None: ...

class AddNodeRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class DrainNodeRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class RebalanceRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StepDownRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class StepDownResponse(_message.Message):
    __slots__ = ("handed_over", "left")
    HANDED_OVER_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    handed_over: int
    left: int
    def __init__(self, handed_over: _Optional[int] = ..., left: _Optional[int] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: NodeState
    def __init__(self, state: _Optional[_Union[NodeState, str]] = ...) -> None: ...
