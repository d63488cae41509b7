from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterPartnerRequest(_message.Message):
    __slots__ = ("partner_id", "name")
    PARTNER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    partner_id: str
    name: str
    def __init__(self, partner_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Partner(_message.Message):
    __slots__ = ("partner_id", "name", "revoked", "registered_unix_ms", "apps")
    PARTNER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    APPS_FIELD_NUMBER: _ClassVar[int]
    partner_id: str
    name: str
    revoked: bool
    registered_unix_ms: int
    apps: _containers.RepeatedCompositeFieldContainer[App]
    def __init__(self, partner_id: _Optional[str] = ..., name: _Optional[str] = ..., revoked: _Optional[bool] = ..., registered_unix_ms: _Optional[int] = ..., apps: _Optional[_Iterable[_Union[App, _Mapping]]] = ...) -> None: ...

class App(_message.Message):
    __slots__ = ("client_id", "scopes", "rate_per_s", "daily_quota", "revoked", "secret_version", "webhook_url", "webhook_version")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_S_FIELD_NUMBER: _ClassVar[int]
    DAILY_QUOTA_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    SECRET_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_VERSION_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    rate_per_s: int
    daily_quota: int
    revoked: bool
    secret_version: int
    webhook_url: str
    webhook_version: int
    def __init__(self, client_id: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., rate_per_s: _Optional[int] = ..., daily_quota: _Optional[int] = ..., revoked: _Optional[bool] = ..., secret_version: _Optional[int] = ..., webhook_url: _Optional[str] = ..., webhook_version: _Optional[int] = ...) -> None: ...

class ListPartnersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPartnersResponse(_message.Message):
    __slots__ = ("partners",)
    PARTNERS_FIELD_NUMBER: _ClassVar[int]
    partners: _containers.RepeatedCompositeFieldContainer[Partner]
    def __init__(self, partners: _Optional[_Iterable[_Union[Partner, _Mapping]]] = ...) -> None: ...

class AddAppRequest(_message.Message):
    __slots__ = ("partner_id", "app", "scopes", "rate_per_s", "daily_quota")
    PARTNER_ID_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_S_FIELD_NUMBER: _ClassVar[int]
    DAILY_QUOTA_FIELD_NUMBER: _ClassVar[int]
    partner_id: str
    app: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    rate_per_s: int
    daily_quota: int
    def __init__(self, partner_id: _Optional[str] = ..., app: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., rate_per_s: _Optional[int] = ..., daily_quota: _Optional[int] = ...) -> None: ...

class AppRef(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    def __init__(self, client_id: _Optional[str] = ...) -> None: ...

class AppCredentials(_message.Message):
    __slots__ = ("app", "client_secret")
    APP_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SECRET_FIELD_NUMBER: _ClassVar[int]
    app: App
    client_secret: str
    def __init__(self, app: _Optional[_Union[App, _Mapping]] = ..., client_secret: _Optional[str] = ...) -> None: ...

class SetWebhookRequest(_message.Message):
    __slots__ = ("client_id", "url")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    url: str
    def __init__(self, client_id: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class WebhookSecret(_message.Message):
    __slots__ = ("app", "signing_secret")
    APP_FIELD_NUMBER: _ClassVar[int]
    SIGNING_SECRET_FIELD_NUMBER: _ClassVar[int]
    app: App
    signing_secret: str
    def __init__(self, app: _Optional[_Union[App, _Mapping]] = ..., signing_secret: _Optional[str] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("apps_revoked",)
    APPS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    apps_revoked: int
    def __init__(self, apps_revoked: _Optional[int] = ...) -> None: ...

class StoredApp(_message.Message):
    __slots__ = ("app", "secret_salt", "secret_scrypt")
    APP_FIELD_NUMBER: _ClassVar[int]
    SECRET_SALT_FIELD_NUMBER: _ClassVar[int]
    SECRET_SCRYPT_FIELD_NUMBER: _ClassVar[int]
    app: App
    secret_salt: bytes
    secret_scrypt: bytes
    def __init__(self, app: _Optional[_Union[App, _Mapping]] = ..., secret_salt: _Optional[bytes] = ..., secret_scrypt: _Optional[bytes] = ...) -> None: ...
