from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RepaymentMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPAYMENT_METHOD_UNSPECIFIED: _ClassVar[RepaymentMethod]
    EQUAL_INSTALMENT: _ClassVar[RepaymentMethod]
    EQUAL_PRINCIPAL: _ClassVar[RepaymentMethod]
    INTEREST_ONLY: _ClassVar[RepaymentMethod]

class DayCount(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DAY_COUNT_UNSPECIFIED: _ClassVar[DayCount]
    ACT_360: _ClassVar[DayCount]
    ACT_365: _ClassVar[DayCount]

class FeeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEE_KIND_UNSPECIFIED: _ClassVar[FeeKind]
    ORIGINATION: _ClassVar[FeeKind]
    LATE_PAYMENT: _ClassVar[FeeKind]
    EARLY_REPAYMENT: _ClassVar[FeeKind]

class ProductState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRODUCT_STATE_UNSPECIFIED: _ClassVar[ProductState]
    DRAFT: _ClassVar[ProductState]
    PUBLISHED: _ClassVar[ProductState]
    RETIRED: _ClassVar[ProductState]
REPAYMENT_METHOD_UNSPECIFIED: RepaymentMethod
EQUAL_INSTALMENT: RepaymentMethod
EQUAL_PRINCIPAL: RepaymentMethod
INTEREST_ONLY: RepaymentMethod
DAY_COUNT_UNSPECIFIED: DayCount
ACT_360: DayCount
ACT_365: DayCount
FEE_KIND_UNSPECIFIED: FeeKind
ORIGINATION: FeeKind
LATE_PAYMENT: FeeKind
EARLY_REPAYMENT: FeeKind
PRODUCT_STATE_UNSPECIFIED: ProductState
DRAFT: ProductState
PUBLISHED: ProductState
RETIRED: ProductState

class Fee(_message.Message):
    __slots__ = ("kind", "amount", "rate_bps")
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    kind: FeeKind
    amount: int
    rate_bps: int
    def __init__(self, kind: _Optional[_Union[FeeKind, str]] = ..., amount: _Optional[int] = ..., rate_bps: _Optional[int] = ...) -> None: ...

class GlMapping(_message.Message):
    __slots__ = ("loan_principal", "interest_receivable", "interest_income", "penalty_income", "fee_income", "loss_allowance")
    LOAN_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    INTEREST_RECEIVABLE_FIELD_NUMBER: _ClassVar[int]
    INTEREST_INCOME_FIELD_NUMBER: _ClassVar[int]
    PENALTY_INCOME_FIELD_NUMBER: _ClassVar[int]
    FEE_INCOME_FIELD_NUMBER: _ClassVar[int]
    LOSS_ALLOWANCE_FIELD_NUMBER: _ClassVar[int]
    loan_principal: str
    interest_receivable: str
    interest_income: str
    penalty_income: str
    fee_income: str
    loss_allowance: str
    def __init__(self, loan_principal: _Optional[str] = ..., interest_receivable: _Optional[str] = ..., interest_income: _Optional[str] = ..., penalty_income: _Optional[str] = ..., fee_income: _Optional[str] = ..., loss_allowance: _Optional[str] = ...) -> None: ...

class ProductParameters(_message.Message):
    __slots__ = ("code", "name", "currency", "amount_min", "amount_max", "annual_rate_bps", "annual_rate_bps_min", "annual_rate_bps_max", "term_months", "term_months_min", "term_months_max", "repayment_method", "day_count", "grace_days", "penalty_rate_bps", "fees", "overridable", "gl")
    CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MIN_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MAX_FIELD_NUMBER: _ClassVar[int]
    ANNUAL_RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    ANNUAL_RATE_BPS_MIN_FIELD_NUMBER: _ClassVar[int]
    ANNUAL_RATE_BPS_MAX_FIELD_NUMBER: _ClassVar[int]
    TERM_MONTHS_FIELD_NUMBER: _ClassVar[int]
    TERM_MONTHS_MIN_FIELD_NUMBER: _ClassVar[int]
    TERM_MONTHS_MAX_FIELD_NUMBER: _ClassVar[int]
    REPAYMENT_METHOD_FIELD_NUMBER: _ClassVar[int]
    DAY_COUNT_FIELD_NUMBER: _ClassVar[int]
    GRACE_DAYS_FIELD_NUMBER: _ClassVar[int]
    PENALTY_RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    FEES_FIELD_NUMBER: _ClassVar[int]
    OVERRIDABLE_FIELD_NUMBER: _ClassVar[int]
    GL_FIELD_NUMBER: _ClassVar[int]
    code: str
    name: str
    currency: str
    amount_min: int
    amount_max: int
    annual_rate_bps: int
    annual_rate_bps_min: int
    annual_rate_bps_max: int
    term_months: int
    term_months_min: int
    term_months_max: int
    repayment_method: RepaymentMethod
    day_count: DayCount
    grace_days: int
    penalty_rate_bps: int
    fees: _containers.RepeatedCompositeFieldContainer[Fee]
    overridable: _containers.RepeatedScalarFieldContainer[str]
    gl: GlMapping
    def __init__(self, code: _Optional[str] = ..., name: _Optional[str] = ..., currency: _Optional[str] = ..., amount_min: _Optional[int] = ..., amount_max: _Optional[int] = ..., annual_rate_bps: _Optional[int] = ..., annual_rate_bps_min: _Optional[int] = ..., annual_rate_bps_max: _Optional[int] = ..., term_months: _Optional[int] = ..., term_months_min: _Optional[int] = ..., term_months_max: _Optional[int] = ..., repayment_method: _Optional[_Union[RepaymentMethod, str]] = ..., day_count: _Optional[_Union[DayCount, str]] = ..., grace_days: _Optional[int] = ..., penalty_rate_bps: _Optional[int] = ..., fees: _Optional[_Iterable[_Union[Fee, _Mapping]]] = ..., overridable: _Optional[_Iterable[str]] = ..., gl: _Optional[_Union[GlMapping, _Mapping]] = ...) -> None: ...

class Product(_message.Message):
    __slots__ = ("code", "version", "state", "parameters", "saved_ms", "published_ms", "retired_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SAVED_MS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_MS_FIELD_NUMBER: _ClassVar[int]
    RETIRED_MS_FIELD_NUMBER: _ClassVar[int]
    code: str
    version: int
    state: ProductState
    parameters: ProductParameters
    saved_ms: int
    published_ms: int
    retired_ms: int
    def __init__(self, code: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[ProductState, str]] = ..., parameters: _Optional[_Union[ProductParameters, _Mapping]] = ..., saved_ms: _Optional[int] = ..., published_ms: _Optional[int] = ..., retired_ms: _Optional[int] = ...) -> None: ...

class SaveDraftRequest(_message.Message):
    __slots__ = ("parameters",)
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    parameters: ProductParameters
    def __init__(self, parameters: _Optional[_Union[ProductParameters, _Mapping]] = ...) -> None: ...

class ProductRef(_message.Message):
    __slots__ = ("code", "version")
    CODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    code: str
    version: int
    def __init__(self, code: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListProductsRequest(_message.Message):
    __slots__ = ("include_drafts", "include_retired")
    INCLUDE_DRAFTS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_RETIRED_FIELD_NUMBER: _ClassVar[int]
    include_drafts: bool
    include_retired: bool
    def __init__(self, include_drafts: _Optional[bool] = ..., include_retired: _Optional[bool] = ...) -> None: ...

class ListProductsResponse(_message.Message):
    __slots__ = ("products",)
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    products: _containers.RepeatedCompositeFieldContainer[Product]
    def __init__(self, products: _Optional[_Iterable[_Union[Product, _Mapping]]] = ...) -> None: ...
