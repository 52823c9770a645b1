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
from ctypes import CFUNCTYPE, c_bool, c_char_p, c_float, c_int, c_int32, c_uint16, c_uint64, c_void_p

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

WriteAccessHandler = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_void_p)
ControlHandler = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_bool)
PerformCheckHandler = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_bool, c_bool)
ConnectionIndicationHandler = CFUNCTYPE(None, c_void_p, c_void_p, c_bool, c_void_p)


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
        "ControlAction_setAddCause": (None, [c_void_p, c_int]),
        "IedServer_setConnectionIndicationHandler": (None, [c_void_p, ConnectionIndicationHandler, c_void_p]),
        "MmsValue_getType": (c_int, [c_void_p]),
        "MmsValue_toFloat": (c_float, [c_void_p]),
        "MmsValue_toInt32": (c_int32, [c_void_p]),
        "MmsValue_getBoolean": (c_bool, [c_void_p]),
        "MmsValue_getUtcTimeInMs": (c_uint64, [c_void_p]),
        "MmsValue_getElement": (c_void_p, [c_void_p, c_int]),
        "MmsValue_toString": (c_char_p, [c_void_p]),
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

