from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SlotOwnership(_message.Message):
    __slots__ = ("slot", "epoch", "owner", "owned")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    OWNED_FIELD_NUMBER: _ClassVar[int]
    slot: int
    epoch: int
    owner: str
    owned: bool
    def __init__(self, slot: _Optional[int] = ..., epoch: _Optional[int] = ..., owner: _Optional[str] = ..., owned: _Optional[bool] = ...) -> None: ...

class GetSlotsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSlotsResponse(_message.Message):
    __slots__ = ("node_id", "slots_total", "map_version", "slots")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    slots_total: int
    map_version: int
    slots: _containers.RepeatedCompositeFieldContainer[SlotOwnership]
    def __init__(self, node_id: _Optional[str] = ..., slots_total: _Optional[int] = ..., map_version: _Optional[int] = ..., slots: _Optional[_Iterable[_Union[SlotOwnership, _Mapping]]] = ...) -> None: ...

class AssignSlotsRequest(_message.Message):
    __slots__ = ("map_version", "self_address", "slots")
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    SELF_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    map_version: int
    self_address: str
    slots: _containers.RepeatedCompositeFieldContainer[SlotOwnership]
    def __init__(self, map_version: _Optional[int] = ..., self_address: _Optional[str] = ..., slots: _Optional[_Iterable[_Union[SlotOwnership, _Mapping]]] = ...) -> None: ...

class AssignSlotsResponse(_message.Message):
    __slots__ = ("slots_owned",)
    SLOTS_OWNED_FIELD_NUMBER: _ClassVar[int]
    slots_owned: int
    def __init__(self, slots_owned: _Optional[int] = ...) -> None: ...
