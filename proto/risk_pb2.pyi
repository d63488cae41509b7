from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    APPROVE: _ClassVar[Outcome]
    DECLINE: _ClassVar[Outcome]
    REFER: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
APPROVE: Outcome
DECLINE: Outcome
REFER: Outcome

class DecideRequest(_message.Message):
    __slots__ = ("application_id", "product", "customer", "amount_requested_fen", "fields", "flow_version")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_REQUESTED_FEN_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    FLOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    application_id: str
    product: str
    customer: str
    amount_requested_fen: int
    fields: _containers.ScalarMap[str, float]
    flow_version: int
    def __init__(self, application_id: _Optional[str] = ..., product: _Optional[str] = ..., customer: _Optional[str] = ..., amount_requested_fen: _Optional[int] = ..., fields: _Optional[_Mapping[str, float]] = ..., flow_version: _Optional[int] = ...) -> None: ...

class DecisionRef(_message.Message):
    __slots__ = ("application_id",)
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    application_id: str
    def __init__(self, application_id: _Optional[str] = ...) -> None: ...

class ReplayRequest(_message.Message):
    __slots__ = ("application_id", "rescore")
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    RESCORE_FIELD_NUMBER: _ClassVar[int]
    application_id: str
    rescore: bool
    def __init__(self, application_id: _Optional[str] = ..., rescore: _Optional[bool] = ...) -> None: ...

class ModelScore(_message.Message):
    __slots__ = ("model", "version", "score")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    score: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("application_id", "product", "customer", "flow_version", "flow_sha256", "outcome", "limit_fen", "price_bps", "reason_codes", "scores", "table_input_json", "decided_at_unix_ms", "credit_line_opened")
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    FLOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    FLOW_SHA256_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FEN_FIELD_NUMBER: _ClassVar[int]
    PRICE_BPS_FIELD_NUMBER: _ClassVar[int]
    REASON_CODES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TABLE_INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CREDIT_LINE_OPENED_FIELD_NUMBER: _ClassVar[int]
    application_id: str
    product: str
    customer: str
    flow_version: int
    flow_sha256: str
    outcome: Outcome
    limit_fen: int
    price_bps: int
    reason_codes: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedCompositeFieldContainer[ModelScore]
    table_input_json: str
    decided_at_unix_ms: int
    credit_line_opened: bool
    def __init__(self, application_id: _Optional[str] = ..., product: _Optional[str] = ..., customer: _Optional[str] = ..., flow_version: _Optional[int] = ..., flow_sha256: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., limit_fen: _Optional[int] = ..., price_bps: _Optional[int] = ..., reason_codes: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[_Union[ModelScore, _Mapping]]] = ..., table_input_json: _Optional[str] = ..., decided_at_unix_ms: _Optional[int] = ..., credit_line_opened: _Optional[bool] = ...) -> None: ...

class ReplayResponse(_message.Message):
    __slots__ = ("stored", "outcome", "limit_fen", "price_bps", "reason_codes", "identical", "rescored", "scores_identical")
    STORED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FEN_FIELD_NUMBER: _ClassVar[int]
    PRICE_BPS_FIELD_NUMBER: _ClassVar[int]
    REASON_CODES_FIELD_NUMBER: _ClassVar[int]
    IDENTICAL_FIELD_NUMBER: _ClassVar[int]
    RESCORED_FIELD_NUMBER: _ClassVar[int]
    SCORES_IDENTICAL_FIELD_NUMBER: _ClassVar[int]
    stored: Decision
    outcome: Outcome
    limit_fen: int
    price_bps: int
    reason_codes: _containers.RepeatedScalarFieldContainer[str]
    identical: bool
    rescored: _containers.RepeatedCompositeFieldContainer[ModelScore]
    scores_identical: bool
    def __init__(self, stored: _Optional[_Union[Decision, _Mapping]] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., limit_fen: _Optional[int] = ..., price_bps: _Optional[int] = ..., reason_codes: _Optional[_Iterable[str]] = ..., identical: _Optional[bool] = ..., rescored: _Optional[_Iterable[_Union[ModelScore, _Mapping]]] = ..., scores_identical: _Optional[bool] = ...) -> None: ...
