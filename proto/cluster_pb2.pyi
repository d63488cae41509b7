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
NODE_STATE_UNSPECIFIED: NodeState
NODE_ACTIVE: NodeState
NODE_JOINING: NodeState
NODE_DRAINING: NodeState

class NodeInfo(_message.Message):
    __slots__ = ("address", "state")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    address: str
    state: NodeState
    def __init__(self, address: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ...) -> None: ...

class ShardMap(_message.Message):
    __slots__ = ("version", "slots_total", "nodes", "slot_owner", "slot_epoch")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SLOT_OWNER_FIELD_NUMBER: _ClassVar[int]
    SLOT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    version: int
    slots_total: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    slot_owner: _containers.RepeatedScalarFieldContainer[int]
    slot_epoch: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, version: _Optional[int] = ..., slots_total: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., slot_owner: _Optional[_Iterable[int]] = ..., slot_epoch: _Optional[_Iterable[int]] = ...) -> None: ...

class GetShardMapRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchShardMapRequest(_message.Message):
    __slots__ = ("known_version",)
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    known_version: int
    def __init__(self, known_version: _Optional[int] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("address", "state", "slots", "reachable", "slots_owned")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_OWNED_FIELD_NUMBER: _ClassVar[int]
    address: str
    state: NodeState
    slots: int
    reachable: bool
    slots_owned: int
    def __init__(self, address: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ..., slots: _Optional[int] = ..., reachable: _Optional[bool] = ..., slots_owned: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("map_version", "slots_total", "nodes")
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    map_version: int
    slots_total: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    def __init__(self, map_version: _Optional[int] = ..., slots_total: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ...) -> None: ...
