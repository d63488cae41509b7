from proto import session_pb2 as _session_pb2
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

class ReasonDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_DIRECTION_UNSPECIFIED: _ClassVar[ReasonDirection]
    RAISES_SCORE: _ClassVar[ReasonDirection]
    LOWERS_SCORE: _ClassVar[ReasonDirection]
OUTCOME_UNSPECIFIED: Outcome
APPROVE: Outcome
DECLINE: Outcome
REFER: Outcome
REASON_DIRECTION_UNSPECIFIED: ReasonDirection
RAISES_SCORE: ReasonDirection
LOWERS_SCORE: ReasonDirection

class OutcomeRequest(_message.Message):
    __slots__ = ("application_id", "label")
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    application_id: str
    label: int
    def __init__(self, application_id: _Optional[str] = ..., label: _Optional[int] = ...) -> None: ...

class OutcomeReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, results: _Optional[_Iterable[str]] = ...) -> None: ...

class DecisionReportRequest(_message.Message):
    __slots__ = ("date_from", "date_to")
    DATE_FROM_FIELD_NUMBER: _ClassVar[int]
    DATE_TO_FIELD_NUMBER: _ClassVar[int]
    date_from: str
    date_to: str
    def __init__(self, date_from: _Optional[str] = ..., date_to: _Optional[str] = ...) -> None: ...

class ProductDecisions(_message.Message):
    __slots__ = ("product", "decided", "approved", "declined", "referred", "lines_opened", "limits_approved")
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    DECLINED_FIELD_NUMBER: _ClassVar[int]
    REFERRED_FIELD_NUMBER: _ClassVar[int]
    LINES_OPENED_FIELD_NUMBER: _ClassVar[int]
    LIMITS_APPROVED_FIELD_NUMBER: _ClassVar[int]
    product: str
    decided: int
    approved: int
    declined: int
    referred: int
    lines_opened: int
    limits_approved: int
    def __init__(self, product: _Optional[str] = ..., decided: _Optional[int] = ..., approved: _Optional[int] = ..., declined: _Optional[int] = ..., referred: _Optional[int] = ..., lines_opened: _Optional[int] = ..., limits_approved: _Optional[int] = ...) -> None: ...

class DecisionReport(_message.Message):
    __slots__ = ("products",)
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    products: _containers.RepeatedCompositeFieldContainer[ProductDecisions]
    def __init__(self, products: _Optional[_Iterable[_Union[ProductDecisions, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("model", "version", "score", "reasons", "expected_margin", "others_margin")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_MARGIN_FIELD_NUMBER: _ClassVar[int]
    OTHERS_MARGIN_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    score: float
    reasons: _containers.RepeatedCompositeFieldContainer[ScoreReason]
    expected_margin: float
    others_margin: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., score: _Optional[float] = ..., reasons: _Optional[_Iterable[_Union[ScoreReason, _Mapping]]] = ..., expected_margin: _Optional[float] = ..., others_margin: _Optional[float] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("application_id", "product", "customer", "flow_version", "flow_sha256", "outcome", "limit_fen", "price_bps", "reason_codes", "scores", "table_input_json", "decided_at_unix_ms", "credit_line_opened", "credit_line_id")
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
    CREDIT_LINE_ID_FIELD_NUMBER: _ClassVar[int]
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
    credit_line_id: str
    def __init__(self, application_id: _Optional[str] = ..., product: _Optional[str] = ..., customer: _Optional[str] = ..., flow_version: _Optional[int] = ..., flow_sha256: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., limit_fen: _Optional[int] = ..., price_bps: _Optional[int] = ..., reason_codes: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[_Union[ModelScore, _Mapping]]] = ..., table_input_json: _Optional[str] = ..., decided_at_unix_ms: _Optional[int] = ..., credit_line_opened: _Optional[bool] = ..., credit_line_id: _Optional[str] = ...) -> None: ...

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

class Borrower(_message.Message):
    __slots__ = ("customer", "profile")
    class ProfileEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    customer: str
    profile: _containers.ScalarMap[str, float]
    def __init__(self, customer: _Optional[str] = ..., profile: _Optional[_Mapping[str, float]] = ...) -> None: ...

class AssessRequest(_message.Message):
    __slots__ = ("run_id", "date", "borrowers")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    BORROWERS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    date: str
    borrowers: _containers.RepeatedCompositeFieldContainer[Borrower]
    def __init__(self, run_id: _Optional[str] = ..., date: _Optional[str] = ..., borrowers: _Optional[_Iterable[_Union[Borrower, _Mapping]]] = ...) -> None: ...

class Assessment(_message.Message):
    __slots__ = ("run_id", "customer", "date", "action", "amount_fen", "warning_level", "reason_codes", "applied", "policy_version", "policy_sha256", "scores", "features", "record_json")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FEN_FIELD_NUMBER: _ClassVar[int]
    WARNING_LEVEL_FIELD_NUMBER: _ClassVar[int]
    REASON_CODES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_SHA256_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    customer: str
    date: str
    action: str
    amount_fen: int
    warning_level: str
    reason_codes: _containers.RepeatedScalarFieldContainer[str]
    applied: str
    policy_version: int
    policy_sha256: str
    scores: _containers.RepeatedCompositeFieldContainer[ModelScore]
    features: _containers.ScalarMap[str, float]
    record_json: str
    def __init__(self, run_id: _Optional[str] = ..., customer: _Optional[str] = ..., date: _Optional[str] = ..., action: _Optional[str] = ..., amount_fen: _Optional[int] = ..., warning_level: _Optional[str] = ..., reason_codes: _Optional[_Iterable[str]] = ..., applied: _Optional[str] = ..., policy_version: _Optional[int] = ..., policy_sha256: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[ModelScore, _Mapping]]] = ..., features: _Optional[_Mapping[str, float]] = ..., record_json: _Optional[str] = ...) -> None: ...

class AssessResponse(_message.Message):
    __slots__ = ("assessments", "not_assessed")
    ASSESSMENTS_FIELD_NUMBER: _ClassVar[int]
    NOT_ASSESSED_FIELD_NUMBER: _ClassVar[int]
    assessments: _containers.RepeatedCompositeFieldContainer[Assessment]
    not_assessed: _containers.RepeatedCompositeFieldContainer[NotAssessed]
    def __init__(self, assessments: _Optional[_Iterable[_Union[Assessment, _Mapping]]] = ..., not_assessed: _Optional[_Iterable[_Union[NotAssessed, _Mapping]]] = ...) -> None: ...

class NotAssessed(_message.Message):
    __slots__ = ("customer", "reason", "no_credit_line")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NO_CREDIT_LINE_FIELD_NUMBER: _ClassVar[int]
    customer: str
    reason: str
    no_credit_line: bool
    def __init__(self, customer: _Optional[str] = ..., reason: _Optional[str] = ..., no_credit_line: _Optional[bool] = ...) -> None: ...

class ListFollowUpsRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class FollowUp(_message.Message):
    __slots__ = ("task", "customer", "kind", "level", "reason_codes", "opened_at_unix_ms", "outcome", "note", "closed_at_unix_ms")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    REASON_CODES_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    task: str
    customer: str
    kind: str
    level: str
    reason_codes: _containers.RepeatedScalarFieldContainer[str]
    opened_at_unix_ms: int
    outcome: str
    note: str
    closed_at_unix_ms: int
    def __init__(self, task: _Optional[str] = ..., customer: _Optional[str] = ..., kind: _Optional[str] = ..., level: _Optional[str] = ..., reason_codes: _Optional[_Iterable[str]] = ..., opened_at_unix_ms: _Optional[int] = ..., outcome: _Optional[str] = ..., note: _Optional[str] = ..., closed_at_unix_ms: _Optional[int] = ...) -> None: ...

class ListFollowUpsResponse(_message.Message):
    __slots__ = ("follow_ups",)
    FOLLOW_UPS_FIELD_NUMBER: _ClassVar[int]
    follow_ups: _containers.RepeatedCompositeFieldContainer[FollowUp]
    def __init__(self, follow_ups: _Optional[_Iterable[_Union[FollowUp, _Mapping]]] = ...) -> None: ...

class FollowUpOutcome(_message.Message):
    __slots__ = ("task", "outcome", "note")
    TASK_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    task: str
    outcome: str
    note: str
    def __init__(self, task: _Optional[str] = ..., outcome: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class CoverageRequest(_message.Message):
    __slots__ = ("customers", "max_age_days")
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_DAYS_FIELD_NUMBER: _ClassVar[int]
    customers: _containers.RepeatedScalarFieldContainer[str]
    max_age_days: float
    def __init__(self, customers: _Optional[_Iterable[str]] = ..., max_age_days: _Optional[float] = ...) -> None: ...

class Coverage(_message.Message):
    __slots__ = ("borrowers", "assessed_current", "coverage", "by_level", "max_age_days")
    class ByLevelEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BORROWERS_FIELD_NUMBER: _ClassVar[int]
    ASSESSED_CURRENT_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    BY_LEVEL_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_DAYS_FIELD_NUMBER: _ClassVar[int]
    borrowers: int
    assessed_current: int
    coverage: float
    by_level: _containers.ScalarMap[str, int]
    max_age_days: float
    def __init__(self, borrowers: _Optional[int] = ..., assessed_current: _Optional[int] = ..., coverage: _Optional[float] = ..., by_level: _Optional[_Mapping[str, int]] = ..., max_age_days: _Optional[float] = ...) -> None: ...

class ScoreReason(_message.Message):
    __slots__ = ("feature", "value", "contribution", "direction", "phrase")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    PHRASE_FIELD_NUMBER: _ClassVar[int]
    feature: str
    value: float
    contribution: float
    direction: ReasonDirection
    phrase: str
    def __init__(self, feature: _Optional[str] = ..., value: _Optional[float] = ..., contribution: _Optional[float] = ..., direction: _Optional[_Union[ReasonDirection, str]] = ..., phrase: _Optional[str] = ...) -> None: ...
