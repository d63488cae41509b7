from proto import session_pb2 as _session_pb2
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

class LoanStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOAN_STATUS_UNSPECIFIED: _ClassVar[LoanStatus]
    PENDING: _ClassVar[LoanStatus]
    ACTIVE: _ClassVar[LoanStatus]
    OVERDUE: _ClassVar[LoanStatus]
    PAID_OFF: _ClassVar[LoanStatus]
    WRITTEN_OFF: _ClassVar[LoanStatus]
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
LOAN_STATUS_UNSPECIFIED: LoanStatus
PENDING: LoanStatus
ACTIVE: LoanStatus
OVERDUE: LoanStatus
PAID_OFF: LoanStatus
WRITTEN_OFF: LoanStatus

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

class ApproveCreditLineRequest(_message.Message):
    __slots__ = ("customer", "line_id", "product_code", "product_version", "customer_limit", "product_limit", "annual_rate_bps", "application_id")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_CODE_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    ANNUAL_RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    customer: str
    line_id: str
    product_code: str
    product_version: int
    customer_limit: int
    product_limit: int
    annual_rate_bps: int
    application_id: str
    def __init__(self, customer: _Optional[str] = ..., line_id: _Optional[str] = ..., product_code: _Optional[str] = ..., product_version: _Optional[int] = ..., customer_limit: _Optional[int] = ..., product_limit: _Optional[int] = ..., annual_rate_bps: _Optional[int] = ..., application_id: _Optional[str] = ...) -> None: ...

class CreditLine(_message.Message):
    __slots__ = ("customer", "line_id", "product_code", "product_version", "customer_limit", "product_limit", "annual_rate_bps", "application_id")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_CODE_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    ANNUAL_RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    customer: str
    line_id: str
    product_code: str
    product_version: int
    customer_limit: int
    product_limit: int
    annual_rate_bps: int
    application_id: str
    def __init__(self, customer: _Optional[str] = ..., line_id: _Optional[str] = ..., product_code: _Optional[str] = ..., product_version: _Optional[int] = ..., customer_limit: _Optional[int] = ..., product_limit: _Optional[int] = ..., annual_rate_bps: _Optional[int] = ..., application_id: _Optional[str] = ...) -> None: ...

class DrawdownRequest(_message.Message):
    __slots__ = ("customer", "loan_id", "product_code", "amount", "date", "annual_rate_bps", "term_months", "repayment_day")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_CODE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    ANNUAL_RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    TERM_MONTHS_FIELD_NUMBER: _ClassVar[int]
    REPAYMENT_DAY_FIELD_NUMBER: _ClassVar[int]
    customer: str
    loan_id: str
    product_code: str
    amount: int
    date: str
    annual_rate_bps: int
    term_months: int
    repayment_day: int
    def __init__(self, customer: _Optional[str] = ..., loan_id: _Optional[str] = ..., product_code: _Optional[str] = ..., amount: _Optional[int] = ..., date: _Optional[str] = ..., annual_rate_bps: _Optional[int] = ..., term_months: _Optional[int] = ..., repayment_day: _Optional[int] = ...) -> None: ...

class Instalment(_message.Message):
    __slots__ = ("number", "start", "due", "principal", "interest", "fees", "penalty", "paid_principal", "paid_interest", "paid_fees", "paid_penalty")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    DUE_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    INTEREST_FIELD_NUMBER: _ClassVar[int]
    FEES_FIELD_NUMBER: _ClassVar[int]
    PENALTY_FIELD_NUMBER: _ClassVar[int]
    PAID_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    PAID_INTEREST_FIELD_NUMBER: _ClassVar[int]
    PAID_FEES_FIELD_NUMBER: _ClassVar[int]
    PAID_PENALTY_FIELD_NUMBER: _ClassVar[int]
    number: int
    start: str
    due: str
    principal: int
    interest: int
    fees: int
    penalty: int
    paid_principal: int
    paid_interest: int
    paid_fees: int
    paid_penalty: int
    def __init__(self, number: _Optional[int] = ..., start: _Optional[str] = ..., due: _Optional[str] = ..., principal: _Optional[int] = ..., interest: _Optional[int] = ..., fees: _Optional[int] = ..., penalty: _Optional[int] = ..., paid_principal: _Optional[int] = ..., paid_interest: _Optional[int] = ..., paid_fees: _Optional[int] = ..., paid_penalty: _Optional[int] = ...) -> None: ...

class Repayment(_message.Message):
    __slots__ = ("repayment_id", "date", "amount", "fees", "penalty", "interest", "principal", "unapplied", "payoff", "done", "fee_charged")
    REPAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    FEES_FIELD_NUMBER: _ClassVar[int]
    PENALTY_FIELD_NUMBER: _ClassVar[int]
    INTEREST_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    UNAPPLIED_FIELD_NUMBER: _ClassVar[int]
    PAYOFF_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FEE_CHARGED_FIELD_NUMBER: _ClassVar[int]
    repayment_id: str
    date: str
    amount: int
    fees: int
    penalty: int
    interest: int
    principal: int
    unapplied: int
    payoff: bool
    done: bool
    fee_charged: int
    def __init__(self, repayment_id: _Optional[str] = ..., date: _Optional[str] = ..., amount: _Optional[int] = ..., fees: _Optional[int] = ..., penalty: _Optional[int] = ..., interest: _Optional[int] = ..., principal: _Optional[int] = ..., unapplied: _Optional[int] = ..., payoff: _Optional[bool] = ..., done: _Optional[bool] = ..., fee_charged: _Optional[int] = ...) -> None: ...

class Loan(_message.Message):
    __slots__ = ("loan_id", "customer", "product_code", "product_version", "principal", "annual_rate_bps", "term_months", "repayment_method", "day_count", "grace_days", "penalty_rate_bps", "drawdown_date", "repayment_day", "status", "schedule", "repayments", "principal_outstanding", "interest_accrued", "penalty_charged", "bucket", "days_past_due", "last_eod_date", "closed_date", "written_off", "fees", "outcome_reported", "application_id")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_CODE_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ANNUAL_RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    TERM_MONTHS_FIELD_NUMBER: _ClassVar[int]
    REPAYMENT_METHOD_FIELD_NUMBER: _ClassVar[int]
    DAY_COUNT_FIELD_NUMBER: _ClassVar[int]
    GRACE_DAYS_FIELD_NUMBER: _ClassVar[int]
    PENALTY_RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    DRAWDOWN_DATE_FIELD_NUMBER: _ClassVar[int]
    REPAYMENT_DAY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    REPAYMENTS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    INTEREST_ACCRUED_FIELD_NUMBER: _ClassVar[int]
    PENALTY_CHARGED_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    DAYS_PAST_DUE_FIELD_NUMBER: _ClassVar[int]
    LAST_EOD_DATE_FIELD_NUMBER: _ClassVar[int]
    CLOSED_DATE_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_OFF_FIELD_NUMBER: _ClassVar[int]
    FEES_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_REPORTED_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    customer: str
    product_code: str
    product_version: int
    principal: int
    annual_rate_bps: int
    term_months: int
    repayment_method: RepaymentMethod
    day_count: DayCount
    grace_days: int
    penalty_rate_bps: int
    drawdown_date: str
    repayment_day: int
    status: LoanStatus
    schedule: _containers.RepeatedCompositeFieldContainer[Instalment]
    repayments: _containers.RepeatedCompositeFieldContainer[Repayment]
    principal_outstanding: int
    interest_accrued: int
    penalty_charged: int
    bucket: str
    days_past_due: int
    last_eod_date: str
    closed_date: str
    written_off: int
    fees: _containers.RepeatedCompositeFieldContainer[Fee]
    outcome_reported: bool
    application_id: str
    def __init__(self, loan_id: _Optional[str] = ..., customer: _Optional[str] = ..., product_code: _Optional[str] = ..., product_version: _Optional[int] = ..., principal: _Optional[int] = ..., annual_rate_bps: _Optional[int] = ..., term_months: _Optional[int] = ..., repayment_method: _Optional[_Union[RepaymentMethod, str]] = ..., day_count: _Optional[_Union[DayCount, str]] = ..., grace_days: _Optional[int] = ..., penalty_rate_bps: _Optional[int] = ..., drawdown_date: _Optional[str] = ..., repayment_day: _Optional[int] = ..., status: _Optional[_Union[LoanStatus, str]] = ..., schedule: _Optional[_Iterable[_Union[Instalment, _Mapping]]] = ..., repayments: _Optional[_Iterable[_Union[Repayment, _Mapping]]] = ..., principal_outstanding: _Optional[int] = ..., interest_accrued: _Optional[int] = ..., penalty_charged: _Optional[int] = ..., bucket: _Optional[str] = ..., days_past_due: _Optional[int] = ..., last_eod_date: _Optional[str] = ..., closed_date: _Optional[str] = ..., written_off: _Optional[int] = ..., fees: _Optional[_Iterable[_Union[Fee, _Mapping]]] = ..., outcome_reported: _Optional[bool] = ..., application_id: _Optional[str] = ...) -> None: ...

class LoanRef(_message.Message):
    __slots__ = ("loan_id",)
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    def __init__(self, loan_id: _Optional[str] = ...) -> None: ...

class ListLoansRequest(_message.Message):
    __slots__ = ("customer",)
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    customer: str
    def __init__(self, customer: _Optional[str] = ...) -> None: ...

class ListLoansResponse(_message.Message):
    __slots__ = ("loans",)
    LOANS_FIELD_NUMBER: _ClassVar[int]
    loans: _containers.RepeatedCompositeFieldContainer[Loan]
    def __init__(self, loans: _Optional[_Iterable[_Union[Loan, _Mapping]]] = ...) -> None: ...

class RepayRequest(_message.Message):
    __slots__ = ("loan_id", "repayment_id", "amount", "date")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    REPAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    repayment_id: str
    amount: int
    date: str
    def __init__(self, loan_id: _Optional[str] = ..., repayment_id: _Optional[str] = ..., amount: _Optional[int] = ..., date: _Optional[str] = ...) -> None: ...

class RepayResponse(_message.Message):
    __slots__ = ("repayment", "loan")
    REPAYMENT_FIELD_NUMBER: _ClassVar[int]
    LOAN_FIELD_NUMBER: _ClassVar[int]
    repayment: Repayment
    loan: Loan
    def __init__(self, repayment: _Optional[_Union[Repayment, _Mapping]] = ..., loan: _Optional[_Union[Loan, _Mapping]] = ...) -> None: ...

class WriteOffRequest(_message.Message):
    __slots__ = ("loan_id", "date")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    date: str
    def __init__(self, loan_id: _Optional[str] = ..., date: _Optional[str] = ...) -> None: ...

class EodSlotsRequest(_message.Message):
    __slots__ = ("date",)
    DATE_FIELD_NUMBER: _ClassVar[int]
    date: str
    def __init__(self, date: _Optional[str] = ...) -> None: ...

class EodPlan(_message.Message):
    __slots__ = ("date", "slots", "slots_done")
    DATE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_DONE_FIELD_NUMBER: _ClassVar[int]
    date: str
    slots: _containers.RepeatedScalarFieldContainer[int]
    slots_done: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, date: _Optional[str] = ..., slots: _Optional[_Iterable[int]] = ..., slots_done: _Optional[_Iterable[int]] = ...) -> None: ...

class EodSlotRequest(_message.Message):
    __slots__ = ("date", "slot")
    DATE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    date: str
    slot: int
    def __init__(self, date: _Optional[str] = ..., slot: _Optional[int] = ...) -> None: ...

class EodSlotResult(_message.Message):
    __slots__ = ("date", "slot", "loans", "transfers", "already_done", "outcomes_reported")
    DATE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    LOANS_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_DONE_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_REPORTED_FIELD_NUMBER: _ClassVar[int]
    date: str
    slot: int
    loans: int
    transfers: int
    already_done: bool
    outcomes_reported: int
    def __init__(self, date: _Optional[str] = ..., slot: _Optional[int] = ..., loans: _Optional[int] = ..., transfers: _Optional[int] = ..., already_done: _Optional[bool] = ..., outcomes_reported: _Optional[int] = ...) -> None: ...

class GlLine(_message.Message):
    __slots__ = ("gl_code", "name", "debit", "credit")
    GL_CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEBIT_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    gl_code: str
    name: str
    debit: int
    credit: int
    def __init__(self, gl_code: _Optional[str] = ..., name: _Optional[str] = ..., debit: _Optional[int] = ..., credit: _Optional[int] = ...) -> None: ...

class GlReportRequest(_message.Message):
    __slots__ = ("as_of",)
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    as_of: str
    def __init__(self, as_of: _Optional[str] = ...) -> None: ...

class GlReport(_message.Message):
    __slots__ = ("lines", "total_debit", "total_credit", "accounts", "as_of", "closed", "closed_lines")
    LINES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DEBIT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CREDIT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    CLOSED_LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[GlLine]
    total_debit: int
    total_credit: int
    accounts: int
    as_of: str
    closed: bool
    closed_lines: _containers.RepeatedCompositeFieldContainer[GlLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[GlLine, _Mapping]]] = ..., total_debit: _Optional[int] = ..., total_credit: _Optional[int] = ..., accounts: _Optional[int] = ..., as_of: _Optional[str] = ..., closed: _Optional[bool] = ..., closed_lines: _Optional[_Iterable[_Union[GlLine, _Mapping]]] = ...) -> None: ...

class JournalEntry(_message.Message):
    __slots__ = ("date", "gl_code", "name", "debit", "credit")
    DATE_FIELD_NUMBER: _ClassVar[int]
    GL_CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEBIT_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    date: str
    gl_code: str
    name: str
    debit: int
    credit: int
    def __init__(self, date: _Optional[str] = ..., gl_code: _Optional[str] = ..., name: _Optional[str] = ..., debit: _Optional[int] = ..., credit: _Optional[int] = ...) -> None: ...

class JournalRequest(_message.Message):
    __slots__ = ("date_from", "date_to")
    DATE_FROM_FIELD_NUMBER: _ClassVar[int]
    DATE_TO_FIELD_NUMBER: _ClassVar[int]
    date_from: str
    date_to: str
    def __init__(self, date_from: _Optional[str] = ..., date_to: _Optional[str] = ...) -> None: ...

class JournalResponse(_message.Message):
    __slots__ = ("entries", "accounts")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[JournalEntry]
    accounts: int
    def __init__(self, entries: _Optional[_Iterable[_Union[JournalEntry, _Mapping]]] = ..., accounts: _Optional[int] = ...) -> None: ...

class ClosePeriodRequest(_message.Message):
    __slots__ = ("date",)
    DATE_FIELD_NUMBER: _ClassVar[int]
    date: str
    def __init__(self, date: _Optional[str] = ...) -> None: ...

class PeriodClose(_message.Message):
    __slots__ = ("date", "trial_balance", "closed_at_unix_ms")
    DATE_FIELD_NUMBER: _ClassVar[int]
    TRIAL_BALANCE_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    date: str
    trial_balance: GlReport
    closed_at_unix_ms: int
    def __init__(self, date: _Optional[str] = ..., trial_balance: _Optional[_Union[GlReport, _Mapping]] = ..., closed_at_unix_ms: _Optional[int] = ...) -> None: ...

class ProvisionRequest(_message.Message):
    __slots__ = ("date",)
    DATE_FIELD_NUMBER: _ClassVar[int]
    date: str
    def __init__(self, date: _Optional[str] = ...) -> None: ...

class ProductProvision(_message.Message):
    __slots__ = ("product_code", "stage1_outstanding", "stage2_outstanding", "stage3_outstanding", "allowance", "posted")
    PRODUCT_CODE_FIELD_NUMBER: _ClassVar[int]
    STAGE1_OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    STAGE2_OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    STAGE3_OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    ALLOWANCE_FIELD_NUMBER: _ClassVar[int]
    POSTED_FIELD_NUMBER: _ClassVar[int]
    product_code: str
    stage1_outstanding: int
    stage2_outstanding: int
    stage3_outstanding: int
    allowance: int
    posted: int
    def __init__(self, product_code: _Optional[str] = ..., stage1_outstanding: _Optional[int] = ..., stage2_outstanding: _Optional[int] = ..., stage3_outstanding: _Optional[int] = ..., allowance: _Optional[int] = ..., posted: _Optional[int] = ...) -> None: ...

class ProvisionResponse(_message.Message):
    __slots__ = ("date", "products")
    DATE_FIELD_NUMBER: _ClassVar[int]
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    date: str
    products: _containers.RepeatedCompositeFieldContainer[ProductProvision]
    def __init__(self, date: _Optional[str] = ..., products: _Optional[_Iterable[_Union[ProductProvision, _Mapping]]] = ...) -> None: ...

class BookReportRequest(_message.Message):
    __slots__ = ("include_customers",)
    INCLUDE_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    include_customers: bool
    def __init__(self, include_customers: _Optional[bool] = ...) -> None: ...

class ProductBook(_message.Message):
    __slots__ = ("product_code", "currency", "credit_lines", "limits_granted", "loans", "open_by_bucket", "outstanding_by_bucket")
    class LoansEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class OpenByBucketEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class OutstandingByBucketEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PRODUCT_CODE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    CREDIT_LINES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_GRANTED_FIELD_NUMBER: _ClassVar[int]
    LOANS_FIELD_NUMBER: _ClassVar[int]
    OPEN_BY_BUCKET_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_BY_BUCKET_FIELD_NUMBER: _ClassVar[int]
    product_code: str
    currency: str
    credit_lines: int
    limits_granted: int
    loans: _containers.ScalarMap[str, int]
    open_by_bucket: _containers.ScalarMap[str, int]
    outstanding_by_bucket: _containers.ScalarMap[str, int]
    def __init__(self, product_code: _Optional[str] = ..., currency: _Optional[str] = ..., credit_lines: _Optional[int] = ..., limits_granted: _Optional[int] = ..., loans: _Optional[_Mapping[str, int]] = ..., open_by_bucket: _Optional[_Mapping[str, int]] = ..., outstanding_by_bucket: _Optional[_Mapping[str, int]] = ...) -> None: ...

class DrawdownTally(_message.Message):
    __slots__ = ("date", "asked", "passed", "refused_no_line", "refused_by_limits")
    DATE_FIELD_NUMBER: _ClassVar[int]
    ASKED_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_NO_LINE_FIELD_NUMBER: _ClassVar[int]
    REFUSED_BY_LIMITS_FIELD_NUMBER: _ClassVar[int]
    date: str
    asked: int
    passed: int
    refused_no_line: int
    refused_by_limits: int
    def __init__(self, date: _Optional[str] = ..., asked: _Optional[int] = ..., passed: _Optional[int] = ..., refused_no_line: _Optional[int] = ..., refused_by_limits: _Optional[int] = ...) -> None: ...

class BookReport(_message.Message):
    __slots__ = ("products", "drawdowns", "customers")
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    DRAWDOWNS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    products: _containers.RepeatedCompositeFieldContainer[ProductBook]
    drawdowns: _containers.RepeatedCompositeFieldContainer[DrawdownTally]
    customers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, products: _Optional[_Iterable[_Union[ProductBook, _Mapping]]] = ..., drawdowns: _Optional[_Iterable[_Union[DrawdownTally, _Mapping]]] = ..., customers: _Optional[_Iterable[str]] = ...) -> None: ...
