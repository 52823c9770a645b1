"""ctypes bindings to the libiec61850 bundled with pyiec61850-ng (GPLv3).

Why ctypes and not the SWIG module (docs/runtime-notes.md, "libiec61850 from Python"): SWIG calls hold
the GIL while server callbacks need it (deadlocks on lockDataModel and stop), the SWIG
control directors abort the process on a Python exception, and there is no SWIG director
for write handlers.  ctypes releases the GIL on every call, and our callbacks catch
everything (a ctypes callback that raises returns 0, which libiec61850 reads as a
meaningful answer).
"""
from __future__ import annotations

import ctypes
import glob
import os
import struct
from typing import Any
from ctypes import CFUNCTYPE, POINTER, c_bool, c_char_p, c_float, c_int, c_int32, c_uint16, c_uint64, c_void_p

import pyiec61850
import pyiec61850.pyiec61850  # noqa: F401 - constants

# Codes from libiec61850's headers, read from the SWIG module (which loads the same
# library) so no number is typed by hand.
_C = pyiec61850.pyiec61850
DATA_ACCESS_ERROR_SUCCESS = _C.DATA_ACCESS_ERROR_SUCCESS
DATA_ACCESS_ERROR_SUCCESS_NO_UPDATE = _C.DATA_ACCESS_ERROR_SUCCESS_NO_UPDATE
DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED = _C.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED
DATA_ACCESS_ERROR_OBJECT_VALUE_INVALID = _C.DATA_ACCESS_ERROR_OBJECT_VALUE_INVALID
CONTROL_ACCEPTED = _C.CONTROL_ACCEPTED
CONTROL_OBJECT_ACCESS_DENIED = _C.CONTROL_OBJECT_ACCESS_DENIED
CONTROL_VALUE_INVALID = _C.CONTROL_VALUE_INVALID
CONTROL_RESULT_FAILED = _C.CONTROL_RESULT_FAILED
CONTROL_RESULT_OK = _C.CONTROL_RESULT_OK
CONTROL_RESULT_WAITING = _C.CONTROL_RESULT_WAITING
ADD_CAUSE_UNKNOWN = _C.ADD_CAUSE_UNKNOWN
ADD_CAUSE_BLOCKED_BY_MODE = _C.ADD_CAUSE_BLOCKED_BY_MODE
ADD_CAUSE_INCONSISTENT_PARAMETERS = _C.ADD_CAUSE_INCONSISTENT_PARAMETERS
ADD_CAUSE_PARAMETER_CHANGE_IN_EXECUTION = _C.ADD_CAUSE_PARAMETER_CHANGE_IN_EXECUTION
QUALITY_GOOD = _C.QUALITY_VALIDITY_GOOD
QUALITY_INVALID = _C.QUALITY_VALIDITY_INVALID
QUALITY_QUESTIONABLE = _C.QUALITY_VALIDITY_QUESTIONABLE
MMS_STRUCTURE = _C.MMS_STRUCTURE
MMS_BOOLEAN = _C.MMS_BOOLEAN
MMS_INTEGER = _C.MMS_INTEGER
MMS_UNSIGNED = _C.MMS_UNSIGNED
MMS_FLOAT = _C.MMS_FLOAT
MMS_UTC_TIME = _C.MMS_UTC_TIME
DATA_ATTRIBUTE_MODEL_TYPE = _C.DataAttributeModelType
CONTROL_MODEL_DIRECT_NORMAL = _C.CONTROL_MODEL_DIRECT_NORMAL
CONTROL_MODEL_DIRECT_ENHANCED = _C.CONTROL_MODEL_DIRECT_ENHANCED
CONTROL_MODEL_SBO_ENHANCED = _C.CONTROL_MODEL_SBO_ENHANCED
ACSE_AUTH_NONE = _C.ACSE_AUTH_NONE
ACSE_AUTH_PASSWORD = _C.ACSE_AUTH_PASSWORD
ACSE_AUTH_TLS = _C.ACSE_AUTH_TLS   # the association came over TLS without an ACSE password: the peer's certificate
TLS_VERSIONS = {"1.2": _C.TLS_VERSION_TLS_1_2, "1.3": _C.TLS_VERSION_TLS_1_3}
TLS_EVENT_INCIDENT = _C.TLS_SEC_EVT_INCIDENT
# TLS events that mean a handshake was refused (a warning level in some builds)
TLS_REFUSALS = frozenset(getattr(_C, name) for name in dir(_C) if name.startswith("TLS_EVENT_CODE_ALM_"))
ACCESS_POLICY_ALLOW = _C.ACCESS_POLICY_ALLOW
ACCESS_POLICY_DENY = _C.ACCESS_POLICY_DENY
FC_SP = _C.IEC61850_FC_SP
FC_SV = _C.IEC61850_FC_SV
FC_SE = _C.IEC61850_FC_SE

WriteAccessHandler = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_void_p)
ControlHandler = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_bool)
PerformCheckHandler = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_bool, c_bool)
ConnectionIndicationHandler = CFUNCTYPE(None, c_void_p, c_void_p, c_bool, c_void_p)
# The MMS server's write handler (libiec61850's mmsWriteHandler): parameter, MmsDomain*,
# variable id ("LN$FC$DO$DA..."), array index (-1: none), component id (NULL: none), value,
# connection.  The strings stay pointers: passed on to libiec61850's own handler as they came.
MmsWriteVariableHandler = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_int, c_void_p, c_void_p, c_void_p)
# (parameter, AcseAuthenticationParameter, void** securityToken, IsoApplicationReference*) -> accept
AcseAuthenticator = CFUNCTYPE(c_bool, c_void_p, c_void_p, POINTER(c_void_p), c_void_p)
# (LogicalDevice*, LogicalNode*, DataObject*, FunctionalConstraint, ClientConnection, parameter) -> DataAccessError
ReadAccessHandler = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_int, c_void_p, c_void_p)
# (parameter, ClientConnection, ACSIClass, LogicalDevice*, LogicalNode*, objectName, subObjectName,
#  IedServer_ControlBlockAccessType) -> allowed
ControlBlockAccessHandler = CFUNCTYPE(c_bool, c_void_p, c_void_p, c_int, c_void_p, c_void_p, c_char_p, c_char_p,
                                      c_int)
# (parameter, TLSEventLevel, event code, message, TLSConnection): libiec61850's TLS events
# (handshake failures, a peer's certificate refused), for the log and the refusal count.
TlsEventHandler = CFUNCTYPE(None, c_void_p, c_int, c_int, c_char_p, c_void_p)


class AcseAuthenticationParameter(ctypes.Structure):
    """struct sAcseAuthenticationParameter (iso_connection_parameters.h): the mechanism, and
    for ACSE_AUTH_TLS the peer's certificate (DER) in the union's certificate member (1.6 has
    no getter for it)."""
    _fields_ = [("mechanism", c_int), ("cert_buf", c_void_p), ("cert_length", c_int)]


# MmsServerConnection_getSecurityToken and _getClientAddress (static in the shipped build:
# found by their .symtab names)
_ServerConnectionToken = CFUNCTYPE(c_void_p, c_void_p)
_ServerConnectionPeer = CFUNCTYPE(c_char_p, c_void_p)


def library_path() -> str:
    base = os.path.dirname(os.path.dirname(pyiec61850.__file__))
    found = sorted(glob.glob(os.path.join(base, "pyiec61850_ng.libs", "libiec61850-*.so*")))
    if not found:
        raise OSError(f"libiec61850 not found next to pyiec61850 in {base}")
    return found[0]


def _declare(lib: ctypes.CDLL) -> None:
    sig = {
        "ConfigFileParser_createModelFromConfigFileEx": (c_void_p, [c_char_p]),
        "IedModel_destroy": (None, [c_void_p]),
        "IedModel_getModelNodeByObjectReference": (c_void_p, [c_void_p, c_char_p]),
        "IedServer_create": (c_void_p, [c_void_p]),
        "IedServer_setLocalIpAddress": (None, [c_void_p, c_char_p]),
        "IedServer_setServerIdentity": (None, [c_void_p, c_char_p, c_char_p, c_char_p]),
        "IedServer_start": (None, [c_void_p, c_int]),
        "IedServer_isRunning": (c_bool, [c_void_p]),
        "IedServer_stop": (None, [c_void_p]),
        "IedServer_destroy": (None, [c_void_p]),
        "IedServer_lockDataModel": (None, [c_void_p]),
        "IedServer_unlockDataModel": (None, [c_void_p]),
        "IedServer_updateFloatAttributeValue": (None, [c_void_p, c_void_p, c_float]),
        "IedServer_updateInt32AttributeValue": (None, [c_void_p, c_void_p, c_int32]),
        "IedServer_updateBooleanAttributeValue": (None, [c_void_p, c_void_p, c_bool]),
        "IedServer_updateUTCTimeAttributeValue": (None, [c_void_p, c_void_p, c_uint64]),
        "IedServer_updateQuality": (None, [c_void_p, c_void_p, c_uint16]),
        "IedServer_updateAttributeValue": (None, [c_void_p, c_void_p, c_void_p]),
        "MmsValue_newUtcTimeByMsTime": (c_void_p, [c_uint64]),
        "MmsValue_delete": (None, [c_void_p]),
        "IedServer_updateVisibleStringAttributeValue": (None, [c_void_p, c_void_p, c_char_p]),
        "IedServer_handleWriteAccess": (None, [c_void_p, c_void_p, WriteAccessHandler, c_void_p]),
        "IedServer_handleWriteAccessForComplexAttribute": (None, [c_void_p, c_void_p, WriteAccessHandler, c_void_p]),
        "IedServer_setControlHandler": (None, [c_void_p, c_void_p, ControlHandler, c_void_p]),
        "IedServer_setPerformCheckHandler": (None, [c_void_p, c_void_p, PerformCheckHandler, c_void_p]),
        # (ControlAction, parameter, ctlVal, test, synchroCheck) -> ControlHandlerResult: the
        # same C signature as the check handler's.
        "IedServer_setWaitForExecutionHandler": (None, [c_void_p, c_void_p, PerformCheckHandler, c_void_p]),
        "ControlAction_setAddCause": (None, [c_void_p, c_int]),
        "IedServer_setConnectionIndicationHandler": (None, [c_void_p, ConnectionIndicationHandler, c_void_p]),
        "IedServer_setAuthenticator": (None, [c_void_p, AcseAuthenticator, c_void_p]),
        "IedServer_setReadAccessHandler": (None, [c_void_p, ReadAccessHandler, c_void_p]),
        "IedServer_setControlBlockAccessHandler": (None, [c_void_p, ControlBlockAccessHandler, c_void_p]),
        "IedServer_setWriteAccessPolicy": (None, [c_void_p, c_int, c_int]),
        "AcseAuthenticationParameter_getAuthMechanism": (c_int, [c_void_p]),
        "AcseAuthenticationParameter_getPassword": (c_void_p, [c_void_p]),
        "AcseAuthenticationParameter_getPasswordLength": (c_int, [c_void_p]),
        "ClientConnection_getPeerAddress": (c_char_p, [c_void_p]),
        "ClientConnection_claimOwnership": (c_void_p, [c_void_p]),
        "ClientConnection_release": (None, [c_void_p]),
        "ClientConnection_abort": (c_bool, [c_void_p]),
        "TLSConfiguration_create": (c_void_p, []),
        "TLSConfiguration_destroy": (None, [c_void_p]),
        "TLSConfiguration_setOwnCertificateFromFile": (c_bool, [c_void_p, c_char_p]),
        "TLSConfiguration_setOwnKeyFromFile": (c_bool, [c_void_p, c_char_p, c_char_p]),
        "TLSConfiguration_addCACertificateFromFile": (c_bool, [c_void_p, c_char_p]),
        "TLSConfiguration_setChainValidation": (None, [c_void_p, c_bool]),
        "TLSConfiguration_setTimeValidation": (None, [c_void_p, c_bool]),
        "TLSConfiguration_setAllowOnlyKnownCertificates": (None, [c_void_p, c_bool]),
        "TLSConfiguration_setMinTlsVersion": (None, [c_void_p, c_int]),
        "TLSConfiguration_setEventHandler": (None, [c_void_p, TlsEventHandler, c_void_p]),
        "IedServer_createWithTlsSupport": (c_void_p, [c_void_p, c_void_p]),
        "ClientConnection_getSecurityToken": (c_void_p, [c_void_p]),
        "ControlAction_getClientConnection": (c_void_p, [c_void_p]),
        "ModelNode_getName": (c_char_p, [c_void_p]),
        "MmsValue_getType": (c_int, [c_void_p]),
        "MmsValue_toFloat": (c_float, [c_void_p]),
        "MmsValue_toInt32": (c_int32, [c_void_p]),
        "MmsValue_getBoolean": (c_bool, [c_void_p]),
        "MmsValue_getUtcTimeInMs": (c_uint64, [c_void_p]),
        "MmsValue_getElement": (c_void_p, [c_void_p, c_int]),
        "MmsValue_toString": (c_char_p, [c_void_p]),
        "MmsValue_equalTypes": (c_bool, [c_void_p, c_void_p]),
        "IedServer_getMmsServer": (c_void_p, [c_void_p]),
        "IedServer_getAttributeValue": (c_void_p, [c_void_p, c_void_p]),
        "IedServer_getInt32AttributeValue": (c_int32, [c_void_p, c_void_p]),
        "ModelNode_getType": (c_int, [c_void_p]),
        "ModelNode_getChild": (c_void_p, [c_void_p, c_char_p]),
        "DataAttribute_getFC": (c_int, [c_void_p]),
        "FunctionalConstraint_fromString": (c_int, [c_char_p]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL(library_path())
        _declare(_lib)
    return _lib


# -- the MMS server's write hook ------------------------------------------------------------
# libiec61850 keeps write access handlers in one linked list that it scans at each install
# (MmsMapping_installWriteAccessHandler) and at each write (mmsWriteHandler): installing n
# handlers costs n^2/2 steps, whichever public function installs them (per attribute, per
# complex attribute or per data object: they all add one entry per attribute).  The MMS
# layer below it calls one function for every write, the `writeHandler` of its MmsServer
# (MmsServer_installWriteHandler, not exported).  MmsServer puts its own function there; the
# server wraps it (server.py) after checking, in the shipped binary, that the slot holds
# exactly libiec61850's mmsWriteHandler with its own MmsMapping as parameter.  Any other
# build fails the check and the server falls back to installing handlers one by one.
# Offsets in pyiec61850-ng 1.6.1.10 (libiec61850 1.6.1), read from its disassembly:
#   IedServer_handleWriteAccess:   mov 0x20(%rdi),%rdi  -> IedServer.mmsMapping at 0x20
#   MmsServer_installWriteHandler: mov %rsi,0x30(%rdi); mov %rdx,0x38(%rdi)
#   MmsDomain_getName:             mov (%rdi),%rax        -> MmsDomain.domainName at 0
MMS_SERVER_WRITE_HANDLER = 0x30
MMS_SERVER_WRITE_PARAMETER = 0x38
IED_SERVER_MMS_MAPPING = 0x20
_KNOWN_FUNCTION = "IedServer_create"  # exported: gives the library's load address
# The write hook gets libiec61850's MmsServerConnection, not the ClientConnection the public
# API takes: the client's security token (set by the authenticator) is read with this one.
_SERVER_CONNECTION_TOKEN = "MmsServerConnection_getSecurityToken"
_SERVER_CONNECTION_PEER = "MmsServerConnection_getClientAddress"


def _elf_symbols(path: str, names: set[str]) -> dict[str, int]:
    """Values of `names` in the ELF .symtab of `path` (static symbols too), {} if none."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # 64-bit little-endian only
        return {}
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    found: dict[str, int] = {}
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if sh_type != 2 or not entsize:  # SHT_SYMTAB
            continue
        str_offset = sections[link][4]
        for st_name, _st_info, _other, _shndx, value, _size in struct.iter_unpack(
                "<IBBHQQ", data[offset:offset + size - size % entsize]):
            end = data.index(b"\0", str_offset + st_name)
            name = data[str_offset + st_name:end].decode("ascii", "replace")
            if name in names and value:
                found.setdefault(name, value)
    return found


_static: dict[str, int] | None = None


def static_function(name: str) -> int | None:
    """Address in this process of a function of libiec61850 that it does not export."""
    global _static
    if _static is None:
        try:
            _static = _elf_symbols(library_path(), {"mmsWriteHandler", _SERVER_CONNECTION_TOKEN,
                                                    _SERVER_CONNECTION_PEER, _KNOWN_FUNCTION})
        except (OSError, ValueError, struct.error):
            _static = {}
    if name not in _static or _KNOWN_FUNCTION not in _static:
        return None
    base = ctypes.cast(getattr(lib(), _KNOWN_FUNCTION), c_void_p).value - _static[_KNOWN_FUNCTION]
    return base + _static[name]


_statics: dict[str, Any] = {}


def _static_call(name: str, prototype):
    fn = _statics.get(name)
    if fn is None:
        address = static_function(name)
        if address is None:
            raise OSError(f"{name} not found in {library_path()}")
        fn = _statics[name] = prototype(address)
    return fn


def server_connection_token(connection: int | None) -> int:
    """The security token of an MmsServerConnection (what the authenticator stored for the
    client's association; 0 when none), as the write hook's `connection` carries it."""
    if not connection:
        return 0
    return _static_call(_SERVER_CONNECTION_TOKEN, _ServerConnectionToken)(connection) or 0


def server_connection_peer(connection: int | None) -> str:
    """The client's address ("ip:port") of an MmsServerConnection."""
    raw = _static_call(_SERVER_CONNECTION_PEER, _ServerConnectionPeer)(connection) if connection else None
    return raw.decode(errors="replace") if raw else ""


def client_token(client_connection: int | None) -> int:
    """The security token of a ClientConnection (0 when none)."""
    return (lib().ClientConnection_getSecurityToken(client_connection) or 0) if client_connection else 0


def client_peer(client_connection: int | None) -> str:
    """The client's address ("ip:port") of a ClientConnection."""
    raw = lib().ClientConnection_getPeerAddress(client_connection) if client_connection else None
    return raw.decode(errors="replace") if raw else ""


def domain_name(domain: int) -> str:
    """The name of an MmsDomain (IED name + logical device inst), as the write hook gets it."""
    raw = c_char_p.from_address(domain).value if domain else None
    return raw.decode(errors="replace") if raw else ""


class WriteHook:
    """libiec61850's MMS write handler replaced by `dispatch` (a MmsWriteVariableHandler),
    which calls `original` for every write it does not handle itself."""

    def __init__(self, ied_server: int, dispatch) -> None:
        lib_ = lib()
        self._dispatch = dispatch  # kept alive as long as the server may call it
        mms = lib_.IedServer_getMmsServer(ied_server)
        self._slot = c_void_p.from_address(mms + MMS_SERVER_WRITE_HANDLER)
        self.original_address = self._slot.value
        self.original = MmsWriteVariableHandler(self.original_address)
        self._slot.value = ctypes.cast(dispatch, c_void_p).value

    def remove(self) -> None:
        self._slot.value = self.original_address

    @staticmethod
    def possible(ied_server: int) -> bool:
        """Whether this server's MMS write handler is the one this module knows (see above)."""
        expected = static_function("mmsWriteHandler")
        if expected is None or not ied_server or any(static_function(name) is None for name in (
                _SERVER_CONNECTION_TOKEN, _SERVER_CONNECTION_PEER)):
            return False
        mms = lib().IedServer_getMmsServer(ied_server)
        if not mms:
            return False
        handler = c_void_p.from_address(mms + MMS_SERVER_WRITE_HANDLER).value
        parameter = c_void_p.from_address(mms + MMS_SERVER_WRITE_PARAMETER).value
        mapping = c_void_p.from_address(ied_server + IED_SERVER_MMS_MAPPING).value
        return handler == expected and parameter is not None and parameter == mapping
