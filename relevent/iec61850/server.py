"""An IEC 61850 MMS server (libiec61850, threaded mode) for one IED model.

libiec61850 runs its own thread; write and control callbacks run there, holding the data
model lock, so they must stay short: decode, decide, hand over, return.  Updates from the
owner's thread take the model lock through ctypes (which releases the GIL while it waits).

Handlers are installed in time independent of how many there are (bench/
mms_startup_bench.py measures a site's start-up).  libiec61850 keeps write handlers in a
list it scans at every install and every write, so n handlers cost n^2/2 steps to install
(12.9 s for the 40,470 handlers of 10 DERs), whichever of its functions installs them.  Instead this server wraps
the MMS layer's write handler (lib.WriteHook, checked against the shipped binary) with one
callback, `_dispatch`, that finds the handler of the written attribute in a dict: `on_write`
only records it.  A write to an attribute with a handler is then decided exactly as
libiec61850 decides it (type check, handler, model update on success, the handler's error
otherwise); every other write goes to libiec61850's own handler unchanged.  Control handlers
are handed to libiec61850 at the first write to their control object (Oper, SBOw, Cancel,
or any other attribute of the data object): its lookup of control objects is a list scan
too.  With any other build of the library the check fails and handlers are installed
through libiec61850's functions one by one, as before.  An owner with many attributes of
one shape (a schedule's 50-200 settable ones) gives a resolver for the logical node
instead (`on_writes`): the handler of an attribute is made at its first write.

Clients: an owner that tells clients apart installs an authenticator (`authenticate`: the
ACSE password of each association -> a security token, or refused), and asks for the
client's token in its handlers (`with_client=True`; the token is the same whichever path,
fast or one by one, called the handler), in its read check (`on_read_access`) and in its
connection handler.  Writes to SP, SV and SE attributes that have no handler are refused
(libiec61850's write access policy: DENY), so no client changes the served model behind the
owner's back (a `setSrcRef`, the reserve's `setCal`), once the owner asks for it
(`deny_writes_without_handler`).
"""
from __future__ import annotations

import ctypes
import logging
from contextlib import contextmanager
import os
import tempfile
import threading
import time
from typing import Any, Callable

from relevent import __version__
from relevent.iec61850 import lib as L

# MMS Identify: vendor, model, revision (module constants: alive as long as any server).
IDENTITY = (b"relevent", b"relevent DER edge runtime", __version__.encode())

log = logging.getLogger("relevent.mms")
_UNRESOLVED = object()


class MmsServerError(Exception):
    pass


class MmsServer:
    """One IED model served over MMS.  The model is built by libiec61850 in a thread of its
    own, started here (4 s of C for 100 DERs, bench/mms_startup_bench.py): meanwhile `has`,
    `on_write` and `on_control` answer and record from the model's text, so the owner's
    handler installation runs alongside; everything else waits for the model (and raises
    MmsServerError if libiec61850 rejected it)."""

    def __init__(self, cfg_text: str, ied_name: str, work_dir: str, tls: dict | None = None) -> None:
        self.lib = L.lib()
        # MMS over TLS (IEC 62351-3): `tls` holds the site policy's cert, key, ca and
        # min_version; the server is then created with libiec61850's TLS support (mbedtls).
        self._tls = tls
        self._tls_config: int | None = None
        self._tls_event_cb = L.TlsEventHandler(self._on_tls_event)
        self._tls_events: Callable[[int, int, str], None] | None = None
        # With TLS, every open ClientConnection is claimed (libiec61850 keeps it alive until
        # released) so the owner can abort a client's association from its own thread
        # (`abort`); closed ones are released there too, never on libiec61850's thread,
        # so a pointer taken for an abort is never freed under it.
        self._claimed: dict[int, bool] = {}
        self._to_release: list[int] = []
        self.ied_name = ied_name
        # One ctypes callback per handler kind for the whole server, with libiec61850's
        # `parameter` (or the dispatch) carrying an index into these tables: 40k attributes
        # would otherwise mean 40k closures and executable thunks (tens of MB, bench/README.md).
        # Write handlers by index: ref, handler, and whether for a complex attribute (no
        # tuple per handler: 400,000 objects fewer for the garbage collector at 100 DERs).
        self._write_refs: list[str] = []
        self._write_handlers: list[Callable] = []
        self._write_complex = bytearray()
        self._write_client = bytearray()          # whether the handler takes the client's token
        self._write_index: dict[str, int] = {}   # ref -> its latest handler
        # Logical node ref -> (resolver, with_client): handlers made at a first write (on_writes).
        self._node_writes: dict[str, tuple[Callable, bool]] = {}
        self._controls: list[tuple[str, Callable, Callable, Callable | None, bool]] = []
        self._pending_controls: dict[str, int] = {}  # DO ref -> index in _controls, not in libiec61850 yet
        # (MmsDomain*, variable id, array index, component) -> (handler index, DataAttribute*),
        # or None for a write libiec61850 handles itself.  Filled by _dispatch, emptied on install.
        self._resolved: dict[tuple, tuple | None] = {}
        self._domains: dict[int, str | None] = {}  # MmsDomain* -> logical device inst (None: not this IED's)
        self._fcs: dict[str, int] = {}
        self._write_cb = L.WriteAccessHandler(self._on_write)
        self._check_cb = L.PerformCheckHandler(self._on_check)
        self._control_cb = L.ControlHandler(self._on_control)
        self._wait_cb = L.PerformCheckHandler(self._on_wait)  # same C signature as a check
        self._dispatch_cb = L.MmsWriteVariableHandler(self._dispatch)
        self._connection_cb = L.ConnectionIndicationHandler(self._on_connection)
        self._connection_handler: Callable[[bool, int, str], None] | None = None
        self._authenticator: Callable[[int, bytes | None], int | None] | None = None
        self._authenticator_cb = L.AcseAuthenticator(self._on_authenticate)
        self._read_access: Callable[[str, int], bool] | None = None
        self._read_access_cb = L.ReadAccessHandler(self._on_read_access)
        self._control_block_cb = L.ControlBlockAccessHandler(self._on_control_block)
        self._ld_names: dict[int, str] = {}  # LogicalDevice* -> its inst, for the read check
        # Authenticated associations indicated to the owner as up (security token -> peer).
        # libiec61850 indicates a connection before its ACSE authentication, so with an
        # authenticator the owner hears of an association at its first request.
        self._associations: dict[int, str] = {}
        self._associations_lock = threading.Lock()
        self._nodes: dict[str, int] = {}
        self._missing: set[str] = set()
        self._index: _ModelIndex | None = _ModelIndex(cfg_text)  # until the server listens
        self.running = False
        self._hook: L.WriteHook | None = None
        self._model: int | None = None
        self._server: int | None = None
        self._built = False
        self._build_error: BaseException | None = None
        self.build_seconds: float | None = None  # how long libiec61850 took to build the model
        self._build_lock = threading.RLock()
        self._handing_over = False
        self._tables = threading.Lock()  # the handler tables, against the hand-over
        fd, self.cfg_path = tempfile.mkstemp(prefix="model-", suffix=".cfg", dir=work_dir)
        self._builder = threading.Thread(target=self._build, args=(fd, cfg_text), name="mms-model", daemon=True)
        self._builder.start()

    def _build(self, fd: int, cfg_text: str) -> None:
        """Builder thread: the model and the server, in libiec61850 (which needs no GIL)."""
        began = time.perf_counter()
        try:
            with os.fdopen(fd, "w") as f:
                f.write(cfg_text)
            self._model = self.lib.ConfigFileParser_createModelFromConfigFileEx(self.cfg_path.encode())
            if not self._model:
                self._build_error = MmsServerError(f"libiec61850 rejected the generated model {self.cfg_path}")
                return
            if self._tls is not None:
                self._tls_config = self._tls_configuration(self._tls)
                self._server = self.lib.IedServer_createWithTlsSupport(self._model, self._tls_config)
            else:
                self._server = self.lib.IedServer_create(self._model)
            # What MMS Identify answers (vendor, model, revision); libiec61850 keeps the pointers.
            self.lib.IedServer_setServerIdentity(self._server, *IDENTITY)
        except BaseException as exc:  # reported by _ready, on the owner's thread
            self._build_error = exc
        finally:
            self.build_seconds = time.perf_counter() - began

    def _tls_configuration(self, tls: dict) -> int:
        """libiec61850's TLSConfiguration from the site policy: own certificate and key, the
        CA bundle every client's certificate must chain to (chain and validity checked by
        mbedtls at the handshake), the lowest version.  Revocation is the owner's check, in
        its authenticator, on the certificate the handshake verified: its CRLs are
        refreshed while the server runs, which libiec61850's CRL list cannot be safely."""
        config = self.lib.TLSConfiguration_create()
        try:
            for setter, key, args in (("setOwnCertificateFromFile", "cert", ()),
                                      ("setOwnKeyFromFile", "key", (None,)),
                                      ("addCACertificateFromFile", "ca", ())):
                path = tls.get(key) or ""
                if not path or not getattr(self.lib, "TLSConfiguration_" + setter)(config, path.encode(), *args):
                    raise MmsServerError(f"MMS over TLS: [tls] {key} {path or '(not set)'}: libiec61850 cannot "
                                         "load it (PEM expected)")
            self.lib.TLSConfiguration_setChainValidation(config, True)
            self.lib.TLSConfiguration_setTimeValidation(config, True)
            self.lib.TLSConfiguration_setAllowOnlyKnownCertificates(config, False)
            self.lib.TLSConfiguration_setMinTlsVersion(config, L.TLS_VERSIONS[tls.get("min_version") or "1.2"])
            self.lib.TLSConfiguration_setEventHandler(config, self._tls_event_cb, None)
        except BaseException:
            self.lib.TLSConfiguration_destroy(config)
            raise
        return config

    def on_tls_event(self, handler: Callable[[int, int, str], None]) -> None:
        """handler(level, code, message) for libiec61850's TLS events (a handshake refused,
        a session established: pyiec61850's TLS_EVENT_CODE_*), on libiec61850's threads."""
        self._tls_events = handler

    def _on_tls_event(self, _param, level, code, message, _connection) -> None:
        try:
            if self._tls_events is not None:
                self._tls_events(level, code, (message or b"").decode(errors="replace"))
        except Exception:
            log.exception("TLS event handler failed")

    def _ready(self) -> None:
        """Wait for the model; then hand the handlers recorded so far to the server."""
        if self._built:
            return
        with self._build_lock:
            if self._built or self._handing_over:  # (handing over uses the model: it is built)
                return
            self._builder.join()
            if self._build_error is not None:
                if isinstance(self._build_error, MmsServerError):
                    raise self._build_error
                raise MmsServerError(f"cannot build the model: {self._build_error}") from self._build_error
            self._handing_over = True
            try:
                hook = L.WriteHook(self._server, self._dispatch_cb) if L.WriteHook.possible(self._server) else None
                with self._tables:
                    self._hook = hook
                    self._hand_over()
                    self._built = True
            finally:
                self._handing_over = False

    def _hand_over(self) -> None:
        """Builder done, `_tables` held: control handlers whose first use may be a read go
        to libiec61850 now, or, without the write hook, every handler recorded so far."""
        if self._hook is not None:
            for do_ref, index in list(self._pending_controls.items()):
                if not self._starts_with_write(do_ref):
                    del self._pending_controls[do_ref]
                    self._install_control(do_ref, index)
            return
        log.warning("libiec61850 is not the build this server knows (%s): write and control handlers "
                    "are installed one by one, in time quadratic in their number", L.library_path())
        for index, ref in enumerate(self._write_refs):
            self._install_write(ref, index, bool(self._write_complex[index]))
        for ln_ref, (resolve, with_client) in self._node_writes.items():
            self._install_node_writes(ln_ref, resolve, with_client)
        for do_ref, index in self._pending_controls.items():
            self._install_control(do_ref, index)
        self._pending_controls.clear()

    @property
    def model(self) -> int | None:
        """libiec61850's IedModel (waits for it to be built)."""
        self._ready()
        return self._model

    @property
    def server(self) -> int | None:
        """libiec61850's IedServer (waits for it to be built)."""
        self._ready()
        return self._server

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, address: str, port: int) -> None:
        srv = self.server
        self._index = None  # every handler is installed: has() asks the model from now on
        self.lib.IedServer_setLocalIpAddress(srv, address.encode())
        self.lib.IedServer_start(srv, port)
        if not self.lib.IedServer_isRunning(srv):
            raise MmsServerError(f"cannot listen on {address}:{port} (in use or not permitted)")
        self.running = True

    def close(self) -> None:
        self._builder.join()
        self._built = True  # nothing to hand over any more
        if self._server:
            if self.running:
                self.lib.IedServer_stop(self._server)
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            self._reap()
            for conn in list(self._claimed):
                self.lib.ClientConnection_release(conn)
            self._claimed.clear()
            self.lib.IedServer_destroy(self._server)
            self._server = None
        if self._tls_config:
            self.lib.TLSConfiguration_destroy(self._tls_config)
            self._tls_config = None
        if self._model:
            self.lib.IedModel_destroy(self._model)
            self._model = None
        self._index = None
        try:
            os.unlink(self.cfg_path)
        except OSError:
            pass

    # -- model access ---------------------------------------------------------------------------
    def node(self, ref: str) -> int:
        """Pointer to the model node `LDinst/LN.DO.DA` (the IED name is prefixed here).

        Found from its logical node's (cached) node, in one call: libiec61850's lookup by the
        whole reference scans every logical device and logical node before it on each call
        (3.6 us a call at 100 DERs, and the endpoint asks for 390,000 nodes), and its
        ModelNode_getChild follows a dotted path itself (one call a level was most of an
        endpoint's first states: bench/README.md, "Where an MMS endpoint's start-up goes")."""
        ptr = self._nodes.get(ref)
        if ptr is None:
            ln_ref, dot, path = ref.partition(".")
            if dot and "/" in ln_ref and "(" not in path and "[" not in path and "$" not in path:
                try:
                    ptr = self.lib.ModelNode_getChild(self.node(ln_ref), path.encode())
                except KeyError:
                    ptr = None
            else:
                ptr = self.lib.IedModel_getModelNodeByObjectReference(self.model, (self.ied_name + ref).encode())
            if not ptr:
                raise KeyError(f"{self.ied_name}{ref} is not in the model")
            self._nodes[ref] = ptr
        return ptr

    def pristine(self, ln_ref: str) -> frozenset[str] | None:
        """Before the server listens (no client can have written): the attributes of logical
        node `LDinst/LN` that the model text gives a value (the others are libiec61850's
        zero of their type, unless the owner updated them).  None once listening."""
        index = self._index
        return None if index is None or self.running else index.initialised(ln_ref)

    def has(self, ref: str) -> bool:
        """Whether the model has the node `LDinst/LN.DO.DA`; answered from the model's text
        until libiec61850 has built the model (no wait for it), then from the model (the
        node found is kept: the caller's next step is mostly an update of it)."""
        if ref in self._missing:
            return False
        index = self._index
        if index is not None and not self._built and ref not in self._nodes:
            known = index.has(ref)
            if known is not None:
                if not known:
                    self._missing.add(ref)
                return known
        try:
            self.node(ref)
            return True
        except KeyError:
            self._missing.add(ref)
            return False

    @contextmanager
    def model_lock(self):
        """Hold libiec61850's data model lock (never from inside a handler: it holds it)."""
        self.lib.IedServer_lockDataModel(self.server)
        try:
            yield
        finally:
            self.lib.IedServer_unlockDataModel(self.server)

    def update(self, changes: list[tuple[str, str, Any]], locked: bool = False) -> None:
        """Apply (reference, kind, value) updates atomically for readers and reports.
        kind: float | int | bool | time (ms, 0 = unset) | time_exact (also drops a finer
        fraction than ms) | quality | string.
        ``locked``: called from a handler, which already holds the model lock."""
        lib, srv = self.lib, self.server
        resolved = [(self.node(ref), kind, value) for ref, kind, value in changes]
        if not locked:
            lib.IedServer_lockDataModel(srv)
        try:
            for ptr, kind, value in resolved:
                if kind == "float":
                    lib.IedServer_updateFloatAttributeValue(srv, ptr, value)
                elif kind == "int":
                    lib.IedServer_updateInt32AttributeValue(srv, ptr, int(value))
                elif kind == "bool":
                    lib.IedServer_updateBooleanAttributeValue(srv, ptr, bool(value))
                elif kind == "time":
                    lib.IedServer_updateUTCTimeAttributeValue(srv, ptr, int(value))
                elif kind == "time_exact":
                    # updateUTCTimeAttributeValue compares in ms and keeps a client's finer
                    # fraction; this replaces the whole value.
                    mms = lib.MmsValue_newUtcTimeByMsTime(int(value))
                    lib.IedServer_updateAttributeValue(srv, ptr, mms)
                    lib.MmsValue_delete(mms)
                elif kind == "quality":
                    lib.IedServer_updateQuality(srv, ptr, int(value))
                elif kind == "string":
                    lib.IedServer_updateVisibleStringAttributeValue(srv, ptr, str(value).encode())
                else:
                    raise ValueError(f"unknown update kind {kind!r}")
        finally:
            if not locked:
                lib.IedServer_unlockDataModel(srv)

    def decode(self, mms_value: int, kind: str) -> Any:
        lib = self.lib
        if kind == "float":
            return lib.MmsValue_toFloat(mms_value)
        if kind == "int":
            return lib.MmsValue_toInt32(mms_value)
        if kind == "bool":
            return lib.MmsValue_getBoolean(mms_value)
        if kind == "time":
            return lib.MmsValue_getUtcTimeInMs(mms_value)
        if kind == "string":
            raw = lib.MmsValue_toString(mms_value)
            return raw.decode() if raw else ""
        raise ValueError(kind)

    def element(self, mms_value: int, index: int) -> int:
        return self.lib.MmsValue_getElement(mms_value, index)

    # -- handlers ------------------------------------------------------------------------------------
    @property
    def fast_handlers(self) -> bool:
        """True when handlers are dispatched by this server (install in O(1)), False when
        they are installed in libiec61850 one by one (an unknown build of the library)."""
        self._ready()
        return self._hook is not None

    def on_write(self, ref: str, handler: Callable[..., int], complex_attribute: bool = False,
                 with_client: bool = False) -> None:
        """handler(mms_value_ptr) -> DataAccessError code; any exception refuses the write.
        With `with_client`: handler(mms_value_ptr, client), `client` the writing client's
        security token (what `authenticate`'s handler gave its association; 0 without one).

        Called on libiec61850's thread with the data model lock held, for a client write to
        the data attribute `ref` (`LDinst/LN.DO.DA...`) and, with `complex_attribute`, to
        any attribute inside it (the value passed is the one written: a structure for the
        attribute itself, the component for one inside).  DATA_ACCESS_ERROR_SUCCESS puts
        the value into the model, SUCCESS_NO_UPDATE accepts it without, any other code is
        the client's answer.  A later install for the same ref replaces the handler; the
        most specific ref wins (an attribute's own handler over its parent's complex one).

        With the fast path this only records the handler (O(1)); `ref` is looked up in the
        model at its first write, and a ref the model does not have is never called."""
        with self._tables:
            index = self._write_index[ref] = len(self._write_refs)
            self._write_refs.append(ref)
            self._write_handlers.append(handler)
            self._write_complex.append(bool(complex_attribute))
            self._write_client.append(bool(with_client))
            if self._resolved:
                self._resolved.clear()
            if self._built and self._hook is None:
                self._install_write(ref, index, complex_attribute)

    def _install_write(self, ref: str, index: int, complex_attribute: bool) -> None:
        install = (self.lib.IedServer_handleWriteAccessForComplexAttribute if complex_attribute
                   else self.lib.IedServer_handleWriteAccess)
        install(self._server, self.node(ref), self._write_cb, index)

    def on_writes(self, ln_ref: str, resolve: Callable[[str], tuple[Callable[..., int], bool] | None],
                  with_client: bool = False) -> None:
        """Write handlers for the attributes of logical node `ln_ref` (`LDinst/LN`), made when
        needed: resolve(path) with `path` an attribute's place in the node (`DO.DA...`)
        returns (handler, complex_attribute) as `on_write` takes them, or None for an
        attribute without one.  An attribute with its own `on_write` handler keeps it.

        With the fast path `resolve` is asked at the first write to an attribute of the node
        (for the attribute, then for the attributes around it, a complex one's handler taking
        its components' writes); so installing costs one entry per logical node, not one per
        attribute (bench/README.md, "A lean start-up").  Without it, every
        attribute of the node in the model's text is asked at the hand-over and its handler
        installed in libiec61850.  Once per logical node, before `start` (handlers a
        resolver made are kept: a second resolver for the node would not replace them)."""
        with self._tables:
            if self._built and self._hook is None:
                if self._index is None:
                    raise MmsServerError(f"write handlers for {ln_ref}: only before start with this libiec61850 build")
                self._install_node_writes(ln_ref, resolve, with_client)
            self._node_writes[ln_ref] = (resolve, bool(with_client))
            if self._resolved:
                self._resolved.clear()

    def _install_node_writes(self, ln_ref: str, resolve: Callable, with_client: bool) -> None:
        """No write hook, `_tables` held, model text still at hand: ask `resolve` for every
        attribute of the node without a handler of its own and install what it gives."""
        for path in self._index.paths(ln_ref) if self._index is not None else ():
            if f"{ln_ref}.{path}" not in self._write_index:
                self._resolve_write(ln_ref, path, resolve, with_client, install=True)

    def _resolve_write(self, ln_ref: str, path: str, resolve: Callable, with_client: bool,
                       install: bool = False) -> int | None:
        """`_tables` held: record the handler `resolve` gives for `ln_ref`.`path`, if any
        (and install it in libiec61850 with `install`); its index."""
        found = resolve(path)
        if found is None:
            return None
        handler, complex_attribute = found
        ref = f"{ln_ref}.{path}"
        index = self._write_index[ref] = len(self._write_refs)
        self._write_refs.append(ref)
        self._write_handlers.append(handler)
        self._write_complex.append(bool(complex_attribute))
        self._write_client.append(bool(with_client))
        if install:
            self._install_write(ref, index, bool(complex_attribute))
        return index

    def on_control(self, do_ref: str, check: Callable[..., int], execute: Callable[..., int],
                   wait: Callable[..., int] | None = None, with_client: bool = False) -> None:
        """check(action, ctlVal, test) -> CheckHandlerResult; execute(...) -> ControlHandlerResult.
        With `with_client`, each of the three also gets the client's security token last
        (as `on_write`'s handlers).

        check runs with the data model lock held: keep it short.  `wait(action, ctlVal,
        test)` (libiec61850's wait-for-execution handler) runs after an accepted check,
        WITHOUT the model lock, about every 10 ms until it returns CONTROL_RESULT_OK or
        CONTROL_RESULT_FAILED (CONTROL_RESULT_WAITING: call again); the client's operate is
        answered only then, negatively on FAILED (DataAccessError 3 and a LastApplError
        with the AddCause set by `set_add_cause`).  So an application can decide an
        operate elsewhere while clients' reads go on.

        With the fast path the handlers reach libiec61850 at the first client write to the
        data object (every operate, select-with-value and cancel is one), or at once for a
        control model whose select is a read (sbo-with-normal-security, status-only)."""
        with self._tables:
            self._controls.append((do_ref, check, execute, wait, bool(with_client)))
            index = len(self._controls) - 1
            if not self._built or (self._hook is not None and self._starts_with_write(do_ref)):
                self._pending_controls[do_ref] = index  # (decided by _hand_over when not built yet)
                if self._resolved:
                    self._resolved.clear()
                return
            self._pending_controls.pop(do_ref, None)
            self._install_control(do_ref, index)

    def _starts_with_write(self, do_ref: str) -> bool:
        """Whether every client service that calls a control handler of `do_ref` is a write."""
        ctl_model = self.node(do_ref + ".ctlModel") if self.has(do_ref + ".ctlModel") else None
        return ctl_model is not None and self.lib.IedServer_getInt32AttributeValue(self._server, ctl_model) in (
            L.CONTROL_MODEL_DIRECT_NORMAL, L.CONTROL_MODEL_DIRECT_ENHANCED, L.CONTROL_MODEL_SBO_ENHANCED)

    def _install_control(self, do_ref: str, index: int) -> None:
        node = self.node(do_ref)
        self.lib.IedServer_setPerformCheckHandler(self._server, node, self._check_cb, index)
        self.lib.IedServer_setControlHandler(self._server, node, self._control_cb, index)
        if self._controls[index][3] is not None:
            self.lib.IedServer_setWaitForExecutionHandler(self._server, node, self._wait_cb, index)

    def deny_writes_without_handler(self) -> None:
        """Refuse (object-access-denied) every client write to an SP, SV or SE attribute that
        has no handler; libiec61850's default lets them change the model (security.md section
        5: a `setSrcRef`, the reserve's `setCal`).  Attributes with a handler are decided by it,
        on both paths: the write hook calls it itself, and libiec61850 calls a handler
        installed for the written attribute before it applies the policy."""
        for fc in (L.FC_SP, L.FC_SV, L.FC_SE):
            self.lib.IedServer_setWriteAccessPolicy(self.server, fc, L.ACCESS_POLICY_DENY)

    def on_connection(self, handler: Callable[[bool, int, str], None]) -> None:
        """handler(connected, client, peer) on every client association opened or closed:
        the client's security token (0 without one) and its address ("ip:port").  With an
        authenticator (`authenticate`) an association is indicated as opened at its first
        request that reaches a handler or the read check (libiec61850 indicates connections
        before it authenticates them), and every association with a token as closed,
        opened or not (so the owner can forget its token)."""
        self._connection_handler = handler
        self.lib.IedServer_setConnectionIndicationHandler(self.server, self._connection_cb, None)

    def _on_connection(self, _server, conn, connected, _param):
        if self._tls is not None and conn:
            if connected:
                self._claimed[conn] = bool(self.lib.ClientConnection_claimOwnership(conn))
            elif self._claimed.pop(conn, None) is not None:
                self._to_release.append(conn)
        if self._connection_handler is None:
            return
        try:
            token = L.client_token(conn)
            if self._authenticator is not None:
                if connected or not token:  # not authenticated yet (or refused): nothing to tell
                    return
                with self._associations_lock:
                    self._associations.pop(token, None)
            self._connection_handler(bool(connected), token, L.client_peer(conn))
        except Exception:
            log.exception("connection handler failed")

    def _client(self, conn, token_of: Callable[[Any], int], peer_of: Callable[[Any], str]) -> int:
        """The security token of the client on `conn`; at its association's first request
        (with an authenticator), the owner hears that it is up."""
        token = token_of(conn)
        if token and token not in self._associations and self._authenticator is not None:
            with self._associations_lock:
                if token in self._associations:
                    return token
                peer = self._associations[token] = peer_of(conn)
            if self._connection_handler is not None:
                try:
                    self._connection_handler(True, token, peer)
                except Exception:
                    log.exception("connection handler failed")
        return token

    def abort(self, tokens: set[int]) -> list[str]:
        """Abort the associations of these security tokens (owner's thread; MMS over TLS
        only): the peers ("ip:port") aborted.  Also releases the connections closed since."""
        aborted = []
        for conn in list(self._claimed):
            if L.client_token(conn) in tokens:
                peer = L.client_peer(conn)
                if self.lib.ClientConnection_abort(conn):
                    aborted.append(peer)
        self._reap()
        return aborted

    def _reap(self) -> None:
        while self._to_release:
            self.lib.ClientConnection_release(self._to_release.pop())

    def authenticate(self, handler: Callable[[int, bytes | None, bytes | None], int | None]) -> None:
        """handler(mechanism, password, certificate) at every association (libiec61850's
        thread, before the client's first request): the ACSE authentication mechanism
        (L.ACSE_AUTH_NONE, L.ACSE_AUTH_PASSWORD, L.ACSE_AUTH_TLS), the password presented
        (None without one) and, over TLS without a password, the client's certificate (DER,
        verified by the handshake; None otherwise).  It returns the association's security
        token (a non-zero int, handed back to the handlers of its requests), or None to
        refuse the association.  Call before `start`."""
        self._authenticator = handler
        self.lib.IedServer_setAuthenticator(self.server, self._authenticator_cb, None)

    def _on_authenticate(self, _param, auth, token_out, _app_reference) -> bool:
        try:
            mechanism = self.lib.AcseAuthenticationParameter_getAuthMechanism(auth) if auth else L.ACSE_AUTH_NONE
            password = None
            if mechanism == L.ACSE_AUTH_PASSWORD:
                length = self.lib.AcseAuthenticationParameter_getPasswordLength(auth)
                raw = self.lib.AcseAuthenticationParameter_getPassword(auth)
                password = ctypes.string_at(raw, length) if raw and length > 0 else b""
            cert = None
            if mechanism == L.ACSE_AUTH_TLS:
                param = L.AcseAuthenticationParameter.from_address(auth)
                if param.cert_buf and param.cert_length > 0:
                    cert = ctypes.string_at(param.cert_buf, param.cert_length)
            token = self._authenticator(mechanism, password, cert)
            if not token:
                return False
            token_out[0] = token
            return True
        except Exception:  # fail closed
            log.exception("authenticator failed")
            return False

    def on_read_access(self, handler: Callable[[str, int], bool]) -> None:
        """handler(ld_inst, client): may this client see logical device `ld_inst`?  Asked
        (on libiec61850's thread: keep it cheap, it runs for each data object read, with the
        GIL) at every read of model data (False: object-access-denied, a whole logical
        node's read too) and at every read or write of a control block (report, GOOSE, log,
        setting group: False denies it, so no report carries another DER's values).
        The directory (names, not values) stays visible: libiec61850 1.6 asks about the LD
        list with no LD, and its own client's GetServerDirectory fails as a whole when one
        LD's variable list is denied, so hiding LDs would leave a restricted party unable
        to browse its own.  Call before `start`."""
        self._read_access = handler
        self.lib.IedServer_setReadAccessHandler(self.server, self._read_access_cb, None)
        self.lib.IedServer_setControlBlockAccessHandler(self.server, self._control_block_cb, None)

    def _ld_name(self, ld) -> str:
        name = self._ld_names.get(ld)
        if name is None:
            raw = self.lib.ModelNode_getName(ld)
            name = self._ld_names[ld] = raw.decode(errors="replace") if raw else ""
        return name

    def _may_see(self, ld, conn) -> bool:
        return self._read_access(self._ld_name(ld), self._client(conn, L.client_token, L.client_peer))

    def _on_read_access(self, ld, _ln, _do, _fc, conn, _param) -> int:
        try:
            return L.DATA_ACCESS_ERROR_SUCCESS if self._may_see(ld, conn) else L.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED
        except Exception:  # fail closed
            log.exception("read access handler failed")
            return L.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED

    def _on_control_block(self, _param, conn, _acsi_class, ld, _ln, _name, _sub, _access) -> bool:
        try:
            return bool(ld) and self._may_see(ld, conn)
        except Exception:  # fail closed
            log.exception("control block access handler failed")
            return False

    @property
    def handler_count(self) -> int:
        return len(self._write_refs) + 2 * len(self._controls)

    # Callbacks run on libiec61850's thread.  A ctypes callback that raises returns 0, which
    # libiec61850 reads as an answer: catch everything.
    def _on_write(self, _da, value, conn, index):
        """libiec61850's write access handler (one-by-one installs): `conn` is a ClientConnection."""
        return self._call_write(index or 0, value, conn, L.client_token, L.client_peer)

    def _call_write(self, index: int, value, conn, token_of: Callable[[Any], int],
                    peer_of: Callable[[Any], str]) -> int:
        """The write handler `index`, given the client's token if it asks for it (`token_of`
        and `peer_of` read the connection: a ClientConnection or, in the hook, an
        MmsServerConnection)."""
        ref, handler = self._write_refs[index], self._write_handlers[index]
        try:
            if self._write_client[index]:
                result = handler(value, self._client(conn, token_of, peer_of))
            else:
                result = handler(value)
            if not isinstance(result, int):
                raise TypeError(f"returned {result!r}, not a DataAccessError code")
            return result
        except Exception:
            log.exception("write handler for %s failed", ref)
            return L.DATA_ACCESS_ERROR_OBJECT_VALUE_INVALID

    def _dispatch(self, parameter, domain, variable_id, array_index, component, value, connection):
        """Every MMS write (fast path): ours are decided here, the rest by libiec61850."""
        try:
            name = ctypes.string_at(variable_id) if variable_id else b""
            part = ctypes.string_at(component) if component else b""
            key = (domain, name, array_index, part)
            hit = self._resolved.get(key, _UNRESOLVED)
            if hit is _UNRESOLVED:
                hit = self._resolve(domain, name, array_index, part)
                self._resolved[key] = hit
            if hit is None:
                return self._hook.original(parameter, domain, variable_id, array_index, component, value,
                                           connection)
            index, da = hit
            lib, srv = self.lib, self._server
            # As libiec61850's mmsWriteHandler: type check, handler, the model on success.
            if not lib.MmsValue_equalTypes(lib.IedServer_getAttributeValue(srv, da), value):
                return L.DATA_ACCESS_ERROR_OBJECT_VALUE_INVALID
            result = self._call_write(index, value, connection, L.server_connection_token, L.server_connection_peer)
            if result == L.DATA_ACCESS_ERROR_SUCCESS:
                lib.IedServer_updateAttributeValue(srv, da, value)
            elif result != L.DATA_ACCESS_ERROR_SUCCESS_NO_UPDATE:
                return result
            return L.DATA_ACCESS_ERROR_SUCCESS
        except Exception:  # fail closed: never let a write through unchecked
            log.exception("write dispatch for %r failed", variable_id)
            return L.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED

    def _resolve(self, domain: int, variable_id: bytes, array_index: int, component: bytes) -> tuple | None:
        """The handler of a write to `variable_id` in `domain`: (index, DataAttribute*), or None
        if it has none here.  Also hands a data object's control handlers to libiec61850 at
        the first write to it (their first use is one: Oper, SBOw, Cancel)."""
        ld = self._domains.get(domain, _UNRESOLVED)
        if ld is _UNRESOLVED:
            name = L.domain_name(domain)
            ld = name[len(self.ied_name):] if name.startswith(self.ied_name) else None
            self._domains[domain] = ld
        if ld is None or not variable_id:
            return None
        parts = variable_id.decode(errors="replace").split("$")
        if component:
            parts += component.decode(errors="replace").split("$")
        if len(parts) < 3:
            return None
        if self._pending_controls:
            do_ref = f"{ld}/{parts[0]}.{parts[2]}"
            with self._tables:  # (lock order: the model lock, then this)
                index = self._pending_controls.pop(do_ref, None)
                if index is not None:
                    self._install_control(do_ref, index)
        if array_index != -1:  # no handler is for an array element
            return None
        base = f"{ld}/{parts[0]}"
        ref = base + "." + ".".join(parts[2:])
        index = self._write_index.get(ref)
        if index is None:  # a complex attribute around it?
            for end in range(len(parts) - 1, 3, -1):
                candidate = self._write_index.get(base + "." + ".".join(parts[2:end]))
                if candidate is not None and self._write_complex[candidate]:
                    index = candidate
                    break
        node_writes = self._node_writes.get(base) if index is None else None
        if node_writes is not None:  # the node's resolver, for the attribute or one around it
            with self._tables:
                for end in range(len(parts), 3, -1):
                    path = ".".join(parts[2:end])
                    if f"{base}.{path}" in self._write_index:
                        break  # its own handler (not a complex one: see above)
                    if not self.has(f"{base}.{path}"):
                        break
                    candidate = self._resolve_write(base, path, *node_writes)
                    if candidate is not None:
                        index = candidate if end == len(parts) or self._write_complex[candidate] else None
                        break
        if index is None or not self.has(ref):
            return None
        da = self.node(ref)
        fc = self._fcs.get(parts[1])
        if fc is None:
            fc = self._fcs[parts[1]] = self.lib.FunctionalConstraint_fromString(parts[1].encode())
        if self.lib.ModelNode_getType(da) != L.DATA_ATTRIBUTE_MODEL_TYPE or self.lib.DataAttribute_getFC(da) != fc:
            return None
        return index, da

    # Control handlers get a ControlAction: its ClientConnection carries the client's token.
    def _on_check(self, action, index, ctl_val, test, _interlock):
        return self._call_control(index, 1, "check", L.CONTROL_OBJECT_ACCESS_DENIED, action, ctl_val, test)

    def _on_control(self, action, index, ctl_val, test):
        return self._call_control(index, 2, "control", L.CONTROL_RESULT_FAILED, action, ctl_val, test)

    def _on_wait(self, action, index, ctl_val, test, _synchro_check):
        return self._call_control(index, 3, "wait", L.CONTROL_RESULT_FAILED, action, ctl_val, test)

    def _call_control(self, index, slot: int, what: str, refusal: int, *args) -> int:
        """One of a control object's handlers (check, control, wait: `slot` in _controls);
        an exception refuses, it never escapes into libiec61850's thread."""
        entry = self._controls[index or 0]
        try:
            if entry[4]:
                conn = self.lib.ControlAction_getClientConnection(args[0])
                return entry[slot](*args, self._client(conn, L.client_token, L.client_peer))
            return entry[slot](*args)
        except Exception:
            log.exception("%s handler for %s failed", what, entry[0])
            return refusal

    def set_add_cause(self, action: int, cause: int) -> None:
        self.lib.ControlAction_setAddCause(action, cause)


class _ModelIndex:
    """The names of a model's nodes, read from its .cfg text (libiec61850's format, one
    element a line: `LD(inst){`, `LN(name){`, `DO(name count){`, `DA(name ...)[=value];` or
    `{`, `}`, data sets and report controls), to answer `has` before libiec61850 has built
    the model.  A logical node's lines are read at its first question, once per distinct
    text: the schedules of a site share a few."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.blocks: dict[str, dict[str, tuple[int, int]]] | None = None  # LD -> LN -> its text's span
        self.trees: dict[str, dict] = {}      # an LN's text -> its tree of names
        self.lns: dict[tuple[str, str], dict | None] = {}
        self.inits: dict[str, frozenset[str]] = {}  # an LN's text -> its attributes with a value

    def _scan(self) -> dict:
        text, blocks, ld, open_ln = self.text, {}, None, None
        at = text.find("\nL")
        while at >= 0:
            kind, end = text[at + 1:at + 3], text.find("\n", at + 1)
            end = len(text) if end < 0 else end
            if open_ln is not None:
                blocks[open_ln[0]][open_ln[1]] = (open_ln[2], at)
                open_ln = None
            if kind in ("LD", "LN") and text.endswith("){", at, end):
                name = text[at + 4:end - 2]
                if kind == "LD":
                    ld = name
                    blocks.setdefault(ld, {})
                elif ld is not None:
                    open_ln = (ld, name, end)
            at = text.find("\nL", end)
        if open_ln is not None:
            blocks[open_ln[0]][open_ln[1]] = (open_ln[2], len(text))
        return blocks

    def _body(self, ld: str, ln: str) -> str | None:
        if self.blocks is None:
            self.blocks = self._scan()
        span = self.blocks.get(ld, {}).get(ln)
        return None if span is None else self.text[span[0]:span[1]]

    def _tree(self, ld: str, ln: str) -> dict | None:
        key = (ld, ln)
        if key in self.lns:
            return self.lns[key]
        body = self._body(ld, ln)
        tree = None
        if body is not None:
            tree = self.trees.get(body)
            if tree is None:
                tree = self.trees[body] = _names(body)
        self.lns[key] = tree
        return tree

    def initialised(self, ln_ref: str) -> frozenset[str] | None:
        """The places (`DO.DA...`) of logical node `LDinst/LN`'s attributes that the model
        text gives a value (`DA(...)=value;`); every other attribute starts as libiec61850's
        zero of its type.  None: no such node."""
        ld, _, ln = ln_ref.partition("/")
        body = self._body(ld, ln)
        if body is None:
            return None
        found = self.inits.get(body)
        if found is None:
            found = self.inits[body] = _initialised(body)
        return found

    def paths(self, ln_ref: str) -> list[str]:
        """Every data object's and attribute's place (`DO.DA...`) in logical node `LDinst/LN`."""
        ld, _, ln = ln_ref.partition("/")
        out: list[str] = []

        def walk(node: dict, prefix: str) -> None:
            for name, children in node.items():
                out.append(prefix + name)
                walk(children, prefix + name + ".")
        walk(self._tree(ld, ln) or {}, "")
        return out

    def has(self, ref: str) -> bool | None:
        """Whether `LDinst/LN[.DO.DA...]` is in the model; None when this cannot tell."""
        ld, slash, rest = ref.partition("/")
        if not slash or any(c in rest for c in "([$"):
            return None
        ln, _, path = rest.partition(".")
        node = self._tree(ld, ln)
        for name in path.split(".") if path else ():
            if node is None:
                break
            node = node.get(name)
        return node is not None


def _initialised(body: str) -> frozenset[str]:
    """The places of the DAs with a value in a logical node's lines."""
    found: set[str] = set()
    path: list[str | None] = []
    for line in body.split("\n"):
        if line.startswith(("DO(", "DA(")):
            space = line.find(" ", 3)
            name = line[3:space if space > 0 else line.find(")")]
            if line.endswith("{"):
                path.append(name)
            elif ")=" in line and None not in path:
                found.add(".".join([*path, name]))
        elif line == "}":
            if path:
                path.pop()
        elif line.endswith("{"):  # a data set or any other block: no model nodes in it
            path.append(None)
    return frozenset(found)


def _names(body: str) -> dict:
    """{name: {child name: ...}} of the DOs and DAs in a logical node's lines."""
    root: dict = {}
    stack = [root]
    for line in body.split("\n"):
        if line.startswith(("DO(", "DA(")):
            space = line.find(" ", 3)
            node: dict = {}
            stack[-1][line[3:space if space > 0 else line.find(")")]] = node
            if line.endswith("{"):
                stack.append(node)
        elif line == "}":
            if len(stack) > 1:
                stack.pop()
        elif line.endswith("{"):  # a data set or any other block: no model nodes in it
            stack.append({})
    return root
