from proto import session_pb2 as _session_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AccountStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNT_STATUS_UNSPECIFIED: _ClassVar[AccountStatus]
    ACTIVE: _ClassVar[AccountStatus]
    FROZEN: _ClassVar[AccountStatus]
    CLOSED: _ClassVar[AccountStatus]

class AccountFlag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNT_FLAG_NONE: _ClassVar[AccountFlag]
    DEBITS_MUST_NOT_EXCEED_CREDITS: _ClassVar[AccountFlag]
    CREDITS_MUST_NOT_EXCEED_DEBITS: _ClassVar[AccountFlag]
    NO_HISTORY: _ClassVar[AccountFlag]

class TransferState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_STATE_UNSPECIFIED: _ClassVar[TransferState]
    TRANSFER_POSTED: _ClassVar[TransferState]
    TRANSFER_PENDING: _ClassVar[TransferState]
    TRANSFER_VOIDED: _ClassVar[TransferState]
    TRANSFER_REJECTED: _ClassVar[TransferState]
    TRANSFER_IN_FLIGHT: _ClassVar[TransferState]
    TRANSFER_EXPIRED: _ClassVar[TransferState]

class TransferFlag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_FLAG_NONE: _ClassVar[TransferFlag]
    PENDING: _ClassVar[TransferFlag]
    POST_PENDING: _ClassVar[TransferFlag]
    VOID_PENDING: _ClassVar[TransferFlag]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    FREEZE: _ClassVar[ChangeKind]
    UNFREEZE: _ClassVar[ChangeKind]
    CLOSE: _ClassVar[ChangeKind]
    SET_OVERDRAFT_LIMIT: _ClassVar[ChangeKind]

class ResultCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESULT_CODE_UNSPECIFIED: _ClassVar[ResultCode]
    OK: _ClassVar[ResultCode]
    EXISTS: _ClassVar[ResultCode]
    EXISTS_WITH_DIFFERENT_FIELDS: _ClassVar[ResultCode]
    ID_INVALID: _ClassVar[ResultCode]
    ACCOUNTS_MUST_BE_DIFFERENT: _ClassVar[ResultCode]
    AMOUNT_MUST_BE_POSITIVE: _ClassVar[ResultCode]
    LEDGER_MUST_NOT_BE_ZERO: _ClassVar[ResultCode]
    CODE_MUST_NOT_BE_ZERO: _ClassVar[ResultCode]
    DEBIT_ACCOUNT_NOT_FOUND: _ClassVar[ResultCode]
    CREDIT_ACCOUNT_NOT_FOUND: _ClassVar[ResultCode]
    ACCOUNTS_MUST_HAVE_SAME_LEDGER: _ClassVar[ResultCode]
    EXCEEDS_CREDITS: _ClassVar[ResultCode]
    EXCEEDS_DEBITS: _ClassVar[ResultCode]
    DEBIT_ACCOUNT_FROZEN: _ClassVar[ResultCode]
    CREDIT_ACCOUNT_FROZEN: _ClassVar[ResultCode]
    DEBIT_ACCOUNT_CLOSED: _ClassVar[ResultCode]
    CREDIT_ACCOUNT_CLOSED: _ClassVar[ResultCode]
    PENDING_TRANSFER_NOT_FOUND: _ClassVar[ResultCode]
    PENDING_TRANSFER_ALREADY_POSTED: _ClassVar[ResultCode]
    PENDING_TRANSFER_ALREADY_VOIDED: _ClassVar[ResultCode]
    PENDING_TRANSFER_EXPIRED: _ClassVar[ResultCode]
    EXCEEDS_PENDING_TRANSFER_AMOUNT: _ClassVar[ResultCode]
    OVERFLOW: _ClassVar[ResultCode]
    IN_FLIGHT: _ClassVar[ResultCode]
    WRONG_SLOT: _ClassVar[ResultCode]
    ACCOUNT_NOT_FOUND: _ClassVar[ResultCode]
    TRANSFER_NOT_FOUND: _ClassVar[ResultCode]
    PENDING_TRANSFER_HAS_DIFFERENT_FIELDS: _ClassVar[ResultCode]
    ACCOUNT_CLOSED: _ClassVar[ResultCode]
    ACCOUNT_ALREADY_FROZEN: _ClassVar[ResultCode]
    ACCOUNT_NOT_FROZEN: _ClassVar[ResultCode]
    ACCOUNT_HAS_PENDING_TRANSFERS: _ClassVar[ResultCode]
    RECORD_NOT_FOUND: _ClassVar[ResultCode]
    RECORD_VERSION_MISMATCH: _ClassVar[ResultCode]
    NOT_IN_COMMIT_SLOT: _ClassVar[ResultCode]
    RECORD_OF_ANOTHER_ROLE: _ClassVar[ResultCode]
    STORED_DATA_INCONSISTENT: _ClassVar[ResultCode]
ACCOUNT_STATUS_UNSPECIFIED: AccountStatus
ACTIVE: AccountStatus
FROZEN: AccountStatus
CLOSED: AccountStatus
ACCOUNT_FLAG_NONE: AccountFlag
DEBITS_MUST_NOT_EXCEED_CREDITS: AccountFlag
CREDITS_MUST_NOT_EXCEED_DEBITS: AccountFlag
NO_HISTORY: AccountFlag
TRANSFER_STATE_UNSPECIFIED: TransferState
TRANSFER_POSTED: TransferState
TRANSFER_PENDING: TransferState
TRANSFER_VOIDED: TransferState
TRANSFER_REJECTED: TransferState
TRANSFER_IN_FLIGHT: TransferState
TRANSFER_EXPIRED: TransferState
TRANSFER_FLAG_NONE: TransferFlag
PENDING: TransferFlag
POST_PENDING: TransferFlag
VOID_PENDING: TransferFlag
CHANGE_KIND_UNSPECIFIED: ChangeKind
FREEZE: ChangeKind
UNFREEZE: ChangeKind
CLOSE: ChangeKind
SET_OVERDRAFT_LIMIT: ChangeKind
RESULT_CODE_UNSPECIFIED: ResultCode
OK: ResultCode
EXISTS: ResultCode
EXISTS_WITH_DIFFERENT_FIELDS: ResultCode
ID_INVALID: ResultCode
ACCOUNTS_MUST_BE_DIFFERENT: ResultCode
AMOUNT_MUST_BE_POSITIVE: ResultCode
LEDGER_MUST_NOT_BE_ZERO: ResultCode
CODE_MUST_NOT_BE_ZERO: ResultCode
DEBIT_ACCOUNT_NOT_FOUND: ResultCode
CREDIT_ACCOUNT_NOT_FOUND: ResultCode
ACCOUNTS_MUST_HAVE_SAME_LEDGER: ResultCode
EXCEEDS_CREDITS: ResultCode
EXCEEDS_DEBITS: ResultCode
DEBIT_ACCOUNT_FROZEN: ResultCode
CREDIT_ACCOUNT_FROZEN: ResultCode
DEBIT_ACCOUNT_CLOSED: ResultCode
CREDIT_ACCOUNT_CLOSED: ResultCode
PENDING_TRANSFER_NOT_FOUND: ResultCode
PENDING_TRANSFER_ALREADY_POSTED: ResultCode
PENDING_TRANSFER_ALREADY_VOIDED: ResultCode
PENDING_TRANSFER_EXPIRED: ResultCode
EXCEEDS_PENDING_TRANSFER_AMOUNT: ResultCode
OVERFLOW: ResultCode
IN_FLIGHT: ResultCode
WRONG_SLOT: ResultCode
ACCOUNT_NOT_FOUND: ResultCode
TRANSFER_NOT_FOUND: ResultCode
PENDING_TRANSFER_HAS_DIFFERENT_FIELDS: ResultCode
ACCOUNT_CLOSED: ResultCode
ACCOUNT_ALREADY_FROZEN: ResultCode
ACCOUNT_NOT_FROZEN: ResultCode
ACCOUNT_HAS_PENDING_TRANSFERS: ResultCode
RECORD_NOT_FOUND: ResultCode
RECORD_VERSION_MISMATCH: ResultCode
NOT_IN_COMMIT_SLOT: ResultCode
RECORD_OF_ANOTHER_ROLE: ResultCode
STORED_DATA_INCONSISTENT: ResultCode

class Account(_message.Message):
    __slots__ = ("id", "ledger", "code", "flags", "debits_posted", "credits_posted", "debits_pending", "credits_pending", "overdraft_limit", "status", "user_data", "timestamp", "created_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    DEBITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    DEBITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    CREDITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    OVERDRAFT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    ledger: int
    code: int
    flags: int
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    overdraft_limit: int
    status: AccountStatus
    user_data: int
    timestamp: int
    created_by: str
    def __init__(self, id: _Optional[str] = ..., ledger: _Optional[int] = ..., code: _Optional[int] = ..., flags: _Optional[int] = ..., debits_posted: _Optional[int] = ..., credits_posted: _Optional[int] = ..., debits_pending: _Optional[int] = ..., credits_pending: _Optional[int] = ..., overdraft_limit: _Optional[int] = ..., status: _Optional[_Union[AccountStatus, str]] = ..., user_data: _Optional[int] = ..., timestamp: _Optional[int] = ..., created_by: _Optional[str] = ...) -> None: ...

class Transfer(_message.Message):
    __slots__ = ("id", "debit_account_id", "credit_account_id", "amount", "ledger", "code", "flags", "pending_id", "timeout_s", "user_data", "timestamp", "state", "result", "amount_posted", "created_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEBIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    PENDING_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_POSTED_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    ledger: int
    code: int
    flags: int
    pending_id: str
    timeout_s: int
    user_data: int
    timestamp: int
    state: TransferState
    result: ResultCode
    amount_posted: int
    created_by: str
    def __init__(self, id: _Optional[str] = ..., debit_account_id: _Optional[str] = ..., credit_account_id: _Optional[str] = ..., amount: _Optional[int] = ..., ledger: _Optional[int] = ..., code: _Optional[int] = ..., flags: _Optional[int] = ..., pending_id: _Optional[str] = ..., timeout_s: _Optional[int] = ..., user_data: _Optional[int] = ..., timestamp: _Optional[int] = ..., state: _Optional[_Union[TransferState, str]] = ..., result: _Optional[_Union[ResultCode, str]] = ..., amount_posted: _Optional[int] = ..., created_by: _Optional[str] = ...) -> None: ...

class AccountChange(_message.Message):
    __slots__ = ("id", "account_id", "kind", "overdraft_limit", "user_data", "timestamp", "result", "created_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OVERDRAFT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    account_id: str
    kind: ChangeKind
    overdraft_limit: int
    user_data: int
    timestamp: int
    result: ResultCode
    created_by: str
    def __init__(self, id: _Optional[str] = ..., account_id: _Optional[str] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., overdraft_limit: _Optional[int] = ..., user_data: _Optional[int] = ..., timestamp: _Optional[int] = ..., result: _Optional[_Union[ResultCode, str]] = ..., created_by: _Optional[str] = ...) -> None: ...

class SlotRedirect(_message.Message):
    __slots__ = ("slot", "epoch", "owner")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    slot: int
    epoch: int
    owner: str
    def __init__(self, slot: _Optional[int] = ..., epoch: _Optional[int] = ..., owner: _Optional[str] = ...) -> None: ...

class EventResult(_message.Message):
    __slots__ = ("code", "field", "timestamp", "state", "redirect")
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    code: ResultCode
    field: str
    timestamp: int
    state: TransferState
    redirect: SlotRedirect
    def __init__(self, code: _Optional[_Union[ResultCode, str]] = ..., field: _Optional[str] = ..., timestamp: _Optional[int] = ..., state: _Optional[_Union[TransferState, str]] = ..., redirect: _Optional[_Union[SlotRedirect, _Mapping]] = ...) -> None: ...

class Fence(_message.Message):
    __slots__ = ("slots", "epochs")
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    slots: _containers.RepeatedScalarFieldContainer[int]
    epochs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, slots: _Optional[_Iterable[int]] = ..., epochs: _Optional[_Iterable[int]] = ...) -> None: ...

class CreateAccountsRequest(_message.Message):
    __slots__ = ("accounts", "fence")
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[Account]
    fence: Fence
    def __init__(self, accounts: _Optional[_Iterable[_Union[Account, _Mapping]]] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ...) -> None: ...

class CreateAccountsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EventResult]
    def __init__(self, results: _Optional[_Iterable[_Union[EventResult, _Mapping]]] = ...) -> None: ...

class CreateTransfersRequest(_message.Message):
    __slots__ = ("transfers", "fence")
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    transfers: _containers.RepeatedCompositeFieldContainer[Transfer]
    fence: Fence
    def __init__(self, transfers: _Optional[_Iterable[_Union[Transfer, _Mapping]]] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ...) -> None: ...

class CreateTransfersResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EventResult]
    def __init__(self, results: _Optional[_Iterable[_Union[EventResult, _Mapping]]] = ...) -> None: ...

class LookupAccountsRequest(_message.Message):
    __slots__ = ("ids", "fence")
    IDS_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    fence: Fence
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ...) -> None: ...

class AccountResult(_message.Message):
    __slots__ = ("code", "account", "redirect")
    CODE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    code: ResultCode
    account: Account
    redirect: SlotRedirect
    def __init__(self, code: _Optional[_Union[ResultCode, str]] = ..., account: _Optional[_Union[Account, _Mapping]] = ..., redirect: _Optional[_Union[SlotRedirect, _Mapping]] = ...) -> None: ...

class LookupAccountsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AccountResult]
    def __init__(self, results: _Optional[_Iterable[_Union[AccountResult, _Mapping]]] = ...) -> None: ...

class TransferKey(_message.Message):
    __slots__ = ("debit_account_id", "id")
    DEBIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    debit_account_id: str
    id: str
    def __init__(self, debit_account_id: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class LookupTransfersRequest(_message.Message):
    __slots__ = ("keys", "fence")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[TransferKey]
    fence: Fence
    def __init__(self, keys: _Optional[_Iterable[_Union[TransferKey, _Mapping]]] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ...) -> None: ...

class TransferResult(_message.Message):
    __slots__ = ("code", "transfer", "redirect")
    CODE_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    code: ResultCode
    transfer: Transfer
    redirect: SlotRedirect
    def __init__(self, code: _Optional[_Union[ResultCode, str]] = ..., transfer: _Optional[_Union[Transfer, _Mapping]] = ..., redirect: _Optional[_Union[SlotRedirect, _Mapping]] = ...) -> None: ...

class LookupTransfersResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TransferResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TransferResult, _Mapping]]] = ...) -> None: ...

class GetAccountTransfersRequest(_message.Message):
    __slots__ = ("account_id", "limit", "newest_first", "cursor", "fence")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    limit: int
    newest_first: bool
    cursor: int
    fence: Fence
    def __init__(self, account_id: _Optional[str] = ..., limit: _Optional[int] = ..., newest_first: _Optional[bool] = ..., cursor: _Optional[int] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ...) -> None: ...

class GetAccountTransfersResponse(_message.Message):
    __slots__ = ("code", "transfers", "next_cursor", "redirect")
    CODE_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    code: ResultCode
    transfers: _containers.RepeatedCompositeFieldContainer[Transfer]
    next_cursor: int
    redirect: SlotRedirect
    def __init__(self, code: _Optional[_Union[ResultCode, str]] = ..., transfers: _Optional[_Iterable[_Union[Transfer, _Mapping]]] = ..., next_cursor: _Optional[int] = ..., redirect: _Optional[_Union[SlotRedirect, _Mapping]] = ...) -> None: ...

class ChangeAccountsRequest(_message.Message):
    __slots__ = ("changes", "fence")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[AccountChange]
    fence: Fence
    def __init__(self, changes: _Optional[_Iterable[_Union[AccountChange, _Mapping]]] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ...) -> None: ...

class ChangeAccountsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EventResult]
    def __init__(self, results: _Optional[_Iterable[_Union[EventResult, _Mapping]]] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("kind", "key", "value", "version", "timestamp", "updated_by")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    kind: str
    key: str
    value: bytes
    version: int
    timestamp: int
    updated_by: str
    def __init__(self, kind: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., version: _Optional[int] = ..., timestamp: _Optional[int] = ..., updated_by: _Optional[str] = ...) -> None: ...

class RecordWrite(_message.Message):
    __slots__ = ("record", "expected_version")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    record: Record
    expected_version: int
    def __init__(self, record: _Optional[_Union[Record, _Mapping]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class Commit(_message.Message):
    __slots__ = ("writes", "transfers", "accounts")
    WRITES_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    writes: _containers.RepeatedCompositeFieldContainer[RecordWrite]
    transfers: _containers.RepeatedCompositeFieldContainer[Transfer]
    accounts: _containers.RepeatedCompositeFieldContainer[Account]
    def __init__(self, writes: _Optional[_Iterable[_Union[RecordWrite, _Mapping]]] = ..., transfers: _Optional[_Iterable[_Union[Transfer, _Mapping]]] = ..., accounts: _Optional[_Iterable[_Union[Account, _Mapping]]] = ...) -> None: ...

class CommitRecordsRequest(_message.Message):
    __slots__ = ("commits", "fence")
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    commits: _containers.RepeatedCompositeFieldContainer[Commit]
    fence: Fence
    def __init__(self, commits: _Optional[_Iterable[_Union[Commit, _Mapping]]] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ...) -> None: ...

class CommitRecordsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EventResult]
    def __init__(self, results: _Optional[_Iterable[_Union[EventResult, _Mapping]]] = ...) -> None: ...

class RecordKey(_message.Message):
    __slots__ = ("kind", "key")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    kind: str
    key: str
    def __init__(self, kind: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class LookupRecordsRequest(_message.Message):
    __slots__ = ("keys", "fence")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[RecordKey]
    fence: Fence
    def __init__(self, keys: _Optional[_Iterable[_Union[RecordKey, _Mapping]]] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ...) -> None: ...

class RecordResult(_message.Message):
    __slots__ = ("code", "record", "redirect")
    CODE_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    code: ResultCode
    record: Record
    redirect: SlotRedirect
    def __init__(self, code: _Optional[_Union[ResultCode, str]] = ..., record: _Optional[_Union[Record, _Mapping]] = ..., redirect: _Optional[_Union[SlotRedirect, _Mapping]] = ...) -> None: ...

class LookupRecordsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RecordResult]
    def __init__(self, results: _Optional[_Iterable[_Union[RecordResult, _Mapping]]] = ...) -> None: ...

class RecordScan(_message.Message):
    __slots__ = ("slot", "kind", "after", "limit", "prefix")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    slot: int
    kind: str
    after: str
    limit: int
    prefix: str
    def __init__(self, slot: _Optional[int] = ..., kind: _Optional[str] = ..., after: _Optional[str] = ..., limit: _Optional[int] = ..., prefix: _Optional[str] = ...) -> None: ...

class ScanRecordsRequest(_message.Message):
    __slots__ = ("scans", "fence")
    SCANS_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    scans: _containers.RepeatedCompositeFieldContainer[RecordScan]
    fence: Fence
    def __init__(self, scans: _Optional[_Iterable[_Union[RecordScan, _Mapping]]] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ...) -> None: ...

class RecordPage(_message.Message):
    __slots__ = ("code", "records", "more", "next_after", "redirect")
    CODE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    code: ResultCode
    records: _containers.RepeatedCompositeFieldContainer[Record]
    more: bool
    next_after: str
    redirect: SlotRedirect
    def __init__(self, code: _Optional[_Union[ResultCode, str]] = ..., records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., more: _Optional[bool] = ..., next_after: _Optional[str] = ..., redirect: _Optional[_Union[SlotRedirect, _Mapping]] = ...) -> None: ...

class ScanRecordsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RecordPage]
    def __init__(self, results: _Optional[_Iterable[_Union[RecordPage, _Mapping]]] = ...) -> None: ...
