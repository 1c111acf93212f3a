from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_ACCEPT: _ClassVar[Verdict]
    VERDICT_REJECT: _ClassVar[Verdict]
    VERDICT_STALE: _ClassVar[Verdict]
    VERDICT_INVALID: _ClassVar[Verdict]
    VERDICT_LOCKED: _ClassVar[Verdict]
    VERDICT_FORBIDDEN: _ClassVar[Verdict]

class Algorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALGORITHM_UNSPECIFIED: _ClassVar[Algorithm]
    ALGORITHM_MD5: _ClassVar[Algorithm]
    ALGORITHM_MD5_SESS: _ClassVar[Algorithm]
    ALGORITHM_SHA_256: _ClassVar[Algorithm]
    ALGORITHM_SHA_256_SESS: _ClassVar[Algorithm]
    ALGORITHM_SHA_512_256: _ClassVar[Algorithm]
    ALGORITHM_SHA_512_256_SESS: _ClassVar[Algorithm]

class ChallengeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHALLENGE_TYPE_UNSPECIFIED: _ClassVar[ChallengeType]
    CHALLENGE_TYPE_WWW: _ClassVar[ChallengeType]
    CHALLENGE_TYPE_PROXY: _ClassVar[ChallengeType]
VERDICT_UNSPECIFIED: Verdict
VERDICT_ACCEPT: Verdict
VERDICT_REJECT: Verdict
VERDICT_STALE: Verdict
VERDICT_INVALID: Verdict
VERDICT_LOCKED: Verdict
VERDICT_FORBIDDEN: Verdict
ALGORITHM_UNSPECIFIED: Algorithm
ALGORITHM_MD5: Algorithm
ALGORITHM_MD5_SESS: Algorithm
ALGORITHM_SHA_256: Algorithm
ALGORITHM_SHA_256_SESS: Algorithm
ALGORITHM_SHA_512_256: Algorithm
ALGORITHM_SHA_512_256_SESS: Algorithm
CHALLENGE_TYPE_UNSPECIFIED: ChallengeType
CHALLENGE_TYPE_WWW: ChallengeType
CHALLENGE_TYPE_PROXY: ChallengeType

class IssueChallengeRequest(_message.Message):
    __slots__ = ("realm", "type", "method", "request_uri", "source_ip", "call_id", "algorithms", "count")
    REALM_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_URI_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    realm: str
    type: ChallengeType
    method: str
    request_uri: str
    source_ip: str
    call_id: str
    algorithms: _containers.RepeatedScalarFieldContainer[Algorithm]
    count: int
    def __init__(self, realm: _Optional[str] = ..., type: _Optional[_Union[ChallengeType, str]] = ..., method: _Optional[str] = ..., request_uri: _Optional[str] = ..., source_ip: _Optional[str] = ..., call_id: _Optional[str] = ..., algorithms: _Optional[_Iterable[_Union[Algorithm, str]]] = ..., count: _Optional[int] = ...) -> None: ...

class ChallengeValues(_message.Message):
    __slots__ = ("header_values",)
    HEADER_VALUES_FIELD_NUMBER: _ClassVar[int]
    header_values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header_values: _Optional[_Iterable[str]] = ...) -> None: ...

class IssueChallengeResponse(_message.Message):
    __slots__ = ("status_code", "header_name", "header_values", "nonce_ttl_seconds", "additional_challenges", "poolable")
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    HEADER_NAME_FIELD_NUMBER: _ClassVar[int]
    HEADER_VALUES_FIELD_NUMBER: _ClassVar[int]
    NONCE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_CHALLENGES_FIELD_NUMBER: _ClassVar[int]
    POOLABLE_FIELD_NUMBER: _ClassVar[int]
    status_code: int
    header_name: str
    header_values: _containers.RepeatedScalarFieldContainer[str]
    nonce_ttl_seconds: int
    additional_challenges: _containers.RepeatedCompositeFieldContainer[ChallengeValues]
    poolable: bool
    def __init__(self, status_code: _Optional[int] = ..., header_name: _Optional[str] = ..., header_values: _Optional[_Iterable[str]] = ..., nonce_ttl_seconds: _Optional[int] = ..., additional_challenges: _Optional[_Iterable[_Union[ChallengeValues, _Mapping]]] = ..., poolable: _Optional[bool] = ...) -> None: ...

class VerifyResponseRequest(_message.Message):
    __slots__ = ("authorization", "method", "request_uri", "body", "realm", "type", "source_ip", "call_id")
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_URI_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    REALM_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    authorization: str
    method: str
    request_uri: str
    body: bytes
    realm: str
    type: ChallengeType
    source_ip: str
    call_id: str
    def __init__(self, authorization: _Optional[str] = ..., method: _Optional[str] = ..., request_uri: _Optional[str] = ..., body: _Optional[bytes] = ..., realm: _Optional[str] = ..., type: _Optional[_Union[ChallengeType, str]] = ..., source_ip: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("display_name", "sip_uri", "groups", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SIP_URI_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    sip_uri: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, display_name: _Optional[str] = ..., sip_uri: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class VerifyResponseResponse(_message.Message):
    __slots__ = ("verdict", "username", "status_code", "challenge", "authentication_info", "reason", "identity")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATION_INFO_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    username: str
    status_code: int
    challenge: IssueChallengeResponse
    authentication_info: str
    reason: str
    identity: Identity
    def __init__(self, verdict: _Optional[_Union[Verdict, str]] = ..., username: _Optional[str] = ..., status_code: _Optional[int] = ..., challenge: _Optional[_Union[IssueChallengeResponse, _Mapping]] = ..., authentication_info: _Optional[str] = ..., reason: _Optional[str] = ..., identity: _Optional[_Union[Identity, _Mapping]] = ...) -> None: ...

class ExchangeRequest(_message.Message):
    __slots__ = ("id", "issue_challenge", "verify_response")
    ID_FIELD_NUMBER: _ClassVar[int]
    ISSUE_CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    VERIFY_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    id: int
    issue_challenge: IssueChallengeRequest
    verify_response: VerifyResponseRequest
    def __init__(self, id: _Optional[int] = ..., issue_challenge: _Optional[_Union[IssueChallengeRequest, _Mapping]] = ..., verify_response: _Optional[_Union[VerifyResponseRequest, _Mapping]] = ...) -> None: ...

class ExchangeResponse(_message.Message):
    __slots__ = ("id", "issue_challenge", "verify_response", "error", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    ISSUE_CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    VERIFY_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    issue_challenge: IssueChallengeResponse
    verify_response: VerifyResponseResponse
    error: ExchangeError
    request_id: str
    def __init__(self, id: _Optional[int] = ..., issue_challenge: _Optional[_Union[IssueChallengeResponse, _Mapping]] = ..., verify_response: _Optional[_Union[VerifyResponseResponse, _Mapping]] = ..., error: _Optional[_Union[ExchangeError, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ExchangeError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...
