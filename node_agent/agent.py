"""The node agent: sessions of one shard, their RPC surface, heartbeats and lease.

One process per shard of up to ``max_sessions`` sessions. The agent serves the operations
of :mod:`contract.protocol` as a ``nats.micro`` service, publishes heartbeats to
``zf.nodes.<id>.heartbeat`` and KV ``zf_nodes``, resumes the sessions KV ``zf_sessions``
assigns to it, and stops all of them by itself when it has been cut off from NATS for
longer than its lease (so a session is never live on two nodes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from contract.protocol import (
    NODES_BUCKET,
    SERVICE_NAME,
    SESSION_STATE_BUCKET,
    SESSIONS_BUCKET,
    BlockRequest,
    ChatPresence,
    ChatRead,
    CheckNumbers,
    ConfigureSession,
    ContactRequest,
    DestroySession,
    Empty,
    ErrorCode,
    GroupCreate,
    GroupInviteRequest,
    GroupLinkRequest,
    GroupParticipantsChange,
    GroupPicture,
    GroupRef,
    GroupRequestsChange,
    GroupsListRequest,
    GroupUpdate,
    HistoryRequest,
    NodeInfo,
    Op,
    PairCode,
    PairCodeRequest,
    PrivacyChange,
    ProfileUpdate,
    SendMessage,
    SessionInfo,
    SessionList,
    SessionRecord,
    SessionRef,
    SessionState,
    StartSession,
    err,
    ok,
)
from node_agent import _system
from node_agent.agent_contacts import ContactsOps
from node_agent.agent_groups import GroupsOps
from node_agent.agent_input import normalize_number
from node_agent.agent_lease import CAPACITY, LeaseOps
from node_agent.agent_messages import MessagingOps
from node_agent.device_store import DeviceStore
from node_agent.engines._base import Engine
from node_agent.errors import AgentError
from node_agent.events import EventPublisher
from node_agent.inbound_media import MediaStore
from node_agent.lease import AssignmentWatch, Lease
from node_agent.link_preview import close_fetchers as close_preview_fetchers
from node_agent.live_state import StatePublisher
from node_agent.media import MediaFetcher
from node_agent.outbox import Outbox
from node_agent.settings import AgentSettings
from node_agent.supervisor import LIVE_STATES, SessionSupervisor, SupervisorConfig
from zapfleet import __version__, natsjs
from zapfleet._gc import settle_after_startup
from zapfleet._logging import bind
from zapfleet.natsjs import ensure_jetstream

log = logging.getLogger(__name__)
R = TypeVar("R", bound=msgspec.Struct)
HOLDS_SLOT = LIVE_STATES | {SessionState.FAILED}
# ops whose requests may be served side by side: sends (in arrival order per session, see
# op_send) and reads; lifecycle ops stay one at a time
CONCURRENT_OPS = frozenset(
    {
        Op.MESSAGE_SEND,
        Op.SESSION_STATUS,
        Op.SESSION_QR,
        Op.SESSIONS_LIST,
        Op.CONTACTS_CHECK,
        Op.HISTORY_LIST,
        Op.NODE_INFO,
        Op.CHAT_READ,
        Op.CHAT_PRESENCE,
        # -- contacts, profile, calls (issue 16) --
        Op.CONTACTS_LIST,
        Op.CONTACT_INFO,
        Op.CONTACT_BLOCK,
        Op.BLOCKLIST_GET,
        Op.PROFILE_SET,
        Op.PRIVACY_GET,
        Op.PRIVACY_SET,
        # -- groups (issue 16) --
        Op.GROUPS_LIST,
        Op.GROUP_INFO,
        Op.GROUP_CREATE,
        Op.GROUP_LEAVE,
        Op.GROUP_PARTICIPANTS,
        Op.GROUP_INVITE,
        Op.GROUP_JOIN,
        Op.GROUP_LINK_INFO,
        Op.GROUP_UPDATE,
        Op.GROUP_REQUESTS,
        Op.GROUP_REQUESTS_UPDATE,
        Op.GROUP_PICTURE,
    }
)
# a start reply waits this long at most for the engine's connect call to return
START_SETTLE_S = 0.25


def make_engine(settings: AgentSettings, nc: NATS) -> Engine:
    if settings.engine == "sim":
        from node_agent.engines.sim import SimConfig, SimEngine

        return SimEngine(
            nc,
            SimConfig(
                qr_first_s=settings.sim_qr_first_s,
                qr_next_s=settings.sim_qr_next_s,
                read_after_s=settings.sim_read_after_s,
                keepalive_s=settings.sim_keepalive_s,
                probe_timeout_s=settings.sim_probe_timeout_s,
                replicas=settings.replicas,
            ),
        )
    from node_agent.engines.neonize import NeonizeConfig, NeonizeEngine

    return NeonizeEngine(
        NeonizeConfig(
            data_dir=settings.data_dir,
            device_store_url=settings.device_store_url,
            max_sessions=settings.max_sessions,
            executor_spare=settings.neonize_executor_spare,
            dial_timeout_s=settings.neonize_dial_timeout_s,
            start_hold_s=settings.neonize_start_hold_s,
            start_stagger_s=settings.start_stagger_s,
            stop_timeout_s=settings.neonize_stop_timeout_s,
            go_log_level=settings.neonize_go_log_level,
            replicas=settings.replicas,
        ),
        nc,
    )


# issue 14: contacts/profile/calls ops in agent_contacts.py, group ops in agent_groups.py
class Agent(LeaseOps, MessagingOps, ContactsOps, GroupsOps):
    def __init__(self, settings: AgentSettings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self._engine = engine
        self.sessions: dict[str, SessionSupervisor] = {}
        # session id -> KV revision of zf_sessions that assigned it here when it started
        self._assigned_at: dict[str, int] = {}
        self.draining = False
        self.started_at = time.time()
        self.lag = _system.LoopLagMonitor()
        self._nc: NATS | None = None
        self._events: EventPublisher | None = None
        self._outbox: Outbox | None = None
        self._restoring: set[asyncio.Task[None]] = set()
        self._service: Service | None = None
        self._rpc_tasks: set[asyncio.Task[None]] = set()
        # per session, the accept of its newest send: the next one enqueues after it
        self._accept_tail: dict[str, asyncio.Future[None]] = {}
        # (tenant, name) -> internal key of the sessions started here: events carry the
        # name, the outbox is keyed by the internal key
        self._keys: dict[tuple[str, str], str] = {}
        self._nodes_kv: KeyValue | None = None
        self._sessions_kv: KeyValue | None = None
        self._live: StatePublisher | None = None  # zf_session_state (node_agent/live_state.py)
        self._tasks: list[asyncio.Task[None]] = []
        self.lease = Lease(settings.lease_ttl_s)
        self._fenced = False
        self._assignments: AssignmentWatch | None = None
        self._device_store: DeviceStore | None = None
        self._media_store: MediaStore | None = None  # inbound media (zf_media)
        self._supervisor_config = SupervisorConfig(
            backoff_base_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
            breaker_threshold=settings.breaker_threshold,
            breaker_cooldown_s=settings.breaker_cooldown_s,
            watchdog_interval_s=settings.watchdog_interval_s,
            watchdog_timeout_s=settings.watchdog_timeout_s,
            send_attempts=settings.send_attempts,
            send_retry_delay_s=settings.send_retry_delay_s,
            history_size=settings.history_size,
        )
        self.media = MediaFetcher(
            max_bytes=settings.max_media_bytes,
            timeout_s=settings.media_timeout_s,
            allow_private=settings.allow_private_targets,
        )
        CAPACITY.set(settings.max_sessions)

    # -- wiring ------------------------------------------------------------------------

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "Agent.start() was not awaited"
        return self._nc

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "Agent.start() was not awaited"
        return self._engine

    @property
    def events(self) -> EventPublisher:
        assert self._events is not None, "Agent.start() was not awaited"
        return self._events

    async def start(self) -> None:
        bind(node_id=self.node_id)
        self._nc = await natsjs.connect(
            self.settings.nats_servers, f"zapfleet-agent-{self.node_id}"
        )
        js = self.nc.jetstream()
        await ensure_jetstream(
            js,
            events_max_age_s=self.settings.events_max_age_s,
            node_ttl_s=self.settings.lease_ttl_s,
            events_max_bytes=self.settings.events_max_bytes,
            events_dedupe_window_s=self.settings.events_dedupe_window_s,
            replicas=self.settings.replicas,
        )
        self._nodes_kv = await js.key_value(NODES_BUCKET)
        self._sessions_kv = await js.key_value(SESSIONS_BUCKET)
        self._events = EventPublisher(js, self.node_id)
        self._live = StatePublisher(await js.key_value(SESSION_STATE_BUCKET))
        self._live.start()
        if self.settings.outbox:
            self._outbox = await Outbox.open(js, replicas=self.settings.replicas)
            self.events.on_stored = self._on_event_stored
        self.events.start()
        try:
            self._media_store = await MediaStore.open(
                js,
                replicas=self.settings.replicas,
                max_bytes=self.settings.media_store_max_bytes,
                ttl_s=self.settings.media_store_ttl_s,
                max_object_bytes=self.settings.media_inbound_max_bytes,
                downloads=self.settings.media_downloads,
            )
        except Exception as exc:  # e.g. the account's JetStream limits: run without it
            log.error("inbound media store unavailable", extra={"error": repr(exc)})
        if self._engine is None:
            self._engine = make_engine(self.settings, self.nc)
        # engines that can check the lease before each network action get the check
        set_guard = getattr(self._engine, "set_lease_guard", None)
        if set_guard is not None:
            set_guard(self.lease.valid)
        await self.engine.start()
        if self.engine.name == "neonize" and not self.settings.device_store_url:
            self._device_store = await DeviceStore.open(
                js, self.settings.data_dir, self.settings.replicas
            )
            self._tasks.append(
                asyncio.create_task(self._device_backup_loop(), name="device-backup")
            )
        self.lag.start()
        self._assignments = AssignmentWatch(
            self._sessions_kv, self.node_id, self._running_assignment, self._stop_superseded
        )
        self._assignments.start()
        await self._serve()
        await self._heartbeat_once()
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
        self._tasks.append(asyncio.create_task(self._lease_loop(), name="lease"))
        await self._resume_assigned()
        log.info("agent ready", extra={"engine": self.engine.name})

    async def _serve(self) -> None:
        self._service = await add_service(
            self.nc,
            name=SERVICE_NAME,
            version=__version__,
            description="zapfleet node agent",
            metadata={"node_id": self.node_id, "engine": self.engine.name},
        )
        group = self._service.add_group(name=f"zf.agent.{self.node_id}")
        routes: dict[Op, tuple[type[Any], Callable[[Any], Awaitable[msgspec.Struct]]]] = {
            Op.SESSION_START: (StartSession, self.op_start),
            Op.SESSION_STOP: (SessionRef, self.op_stop),
            Op.SESSION_LOGOUT: (SessionRef, self.op_logout),
            Op.SESSION_RESTART: (SessionRef, self.op_restart),
            Op.SESSION_RECONNECT: (SessionRef, self.op_reconnect),
            Op.SESSION_RESET_BREAKER: (SessionRef, self.op_reset_breaker),
            Op.SESSION_STATUS: (SessionRef, self.op_status),
            Op.SESSION_QR: (SessionRef, self.op_qr),
            Op.SESSION_PAIR_CODE: (PairCodeRequest, self.op_pair_code),
            Op.SESSION_CONFIGURE: (ConfigureSession, self.op_configure),
            Op.SESSION_DESTROY: (DestroySession, self.op_destroy),
            Op.SESSIONS_LIST: (Empty, self.op_list),
            Op.MESSAGE_SEND: (SendMessage, self.op_send),
            Op.CONTACTS_CHECK: (CheckNumbers, self.op_check),
            Op.HISTORY_LIST: (HistoryRequest, self.op_history),
            Op.CHAT_READ: (ChatRead, self.op_chat_read),
            Op.CHAT_PRESENCE: (ChatPresence, self.op_chat_presence),
            Op.NODE_INFO: (Empty, self.op_node_info),
            # -- contacts, profile, calls (issue 16) --
            Op.CONTACTS_LIST: (SessionRef, self.op_contacts_list),
            Op.CONTACT_INFO: (ContactRequest, self.op_contact_info),
            Op.CONTACT_BLOCK: (BlockRequest, self.op_contact_block),
            Op.BLOCKLIST_GET: (SessionRef, self.op_blocklist),
            Op.PROFILE_SET: (ProfileUpdate, self.op_profile_set),
            Op.PRIVACY_GET: (SessionRef, self.op_privacy_get),
            Op.PRIVACY_SET: (PrivacyChange, self.op_privacy_set),
            # -- groups (issue 16) --
            Op.GROUPS_LIST: (GroupsListRequest, self.op_groups_list),
            Op.GROUP_INFO: (GroupRef, self.op_group_info),
            Op.GROUP_CREATE: (GroupCreate, self.op_group_create),
            Op.GROUP_LEAVE: (GroupRef, self.op_group_leave),
            Op.GROUP_PARTICIPANTS: (GroupParticipantsChange, self.op_group_participants),
            Op.GROUP_INVITE: (GroupInviteRequest, self.op_group_invite),
            Op.GROUP_JOIN: (GroupLinkRequest, self.op_group_join),
            Op.GROUP_LINK_INFO: (GroupLinkRequest, self.op_group_link_info),
            Op.GROUP_UPDATE: (GroupUpdate, self.op_group_update),
            Op.GROUP_REQUESTS: (GroupRef, self.op_group_requests),
            Op.GROUP_PICTURE: (GroupPicture, self.op_group_picture),
            Op.GROUP_REQUESTS_UPDATE: (GroupRequestsChange, self.op_group_requests_update),
        }
        for op, (request_type, handler) in routes.items():
            # queue group per node: several connections of one agent never double-serve
            await group.add_endpoint(
                name=op.value,
                subject=op.value,
                handler=self._rpc(request_type, handler, concurrent=op in CONCURRENT_OPS),
                queue_group=f"zf-agent-{self.node_id}",
            )

    @staticmethod
    def _invalid(exc: msgspec.DecodeError) -> bytes:
        """The error reply for a body that does not decode. An unknown message type is
        its own code (the client can fall back); anything else is an invalid request."""
        text = str(exc)
        if "`$.content.type`" in text or text.endswith("`$.content`"):
            return err(ErrorCode.UNSUPPORTED_MESSAGE, f"unsupported message type: {text}")
        return err(ErrorCode.INVALID_REQUEST, text)

    def _rpc(
        self,
        request_type: type[R],
        handler: Callable[[R], Awaitable[msgspec.Struct]],
        *,
        concurrent: bool = False,
    ) -> Callable[[Request], Awaitable[None]]:
        """The endpoint of one op. nats.micro awaits an endpoint's handler before it takes
        the next request of that endpoint, so a lifecycle op (start, stop, logout...) is
        served one at a time, in order. A ``concurrent`` op is served in a task of its
        own instead: one send waiting for its outbox write must not hold up the next
        (measured: sends were capped at ~550/s by that wait). At most
        ``rpc_max_inflight`` run at once; past that the endpoint waits, which pushes back
        on NATS instead of piling up tasks."""
        decoder = msgspec.json.Decoder(request_type)

        async def serve(request: Request) -> None:
            try:
                body = decoder.decode(request.data or b"{}")
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                await request.respond(self._invalid(exc))
                return
            try:
                reply = ok(await handler(body))
            except AgentError as exc:
                reply = err(exc.code, exc.message, exc.retry_after_s)
            except Exception as exc:
                log.exception("rpc handler failed", extra={"op": request.subject})
                reply = err(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
            with contextlib.suppress(Exception):  # the connection is gone: the caller times out
                await request.respond(reply)

        if not concurrent:
            return serve
        slots = asyncio.Semaphore(self.settings.rpc_max_inflight)

        async def serve_and_release(request: Request) -> None:
            try:
                await serve(request)
            finally:
                slots.release()

        async def endpoint(request: Request) -> None:
            await slots.acquire()
            task = asyncio.create_task(serve_and_release(request))
            self._rpc_tasks.add(task)
            task.add_done_callback(self._rpc_tasks.discard)

        return endpoint

    # -- admission and fencing ---------------------------------------------------------

    def _live_count(self) -> int:
        """Sessions holding a slot: every one not STOPPED or LOGGED_OUT (a FAILED session
        retries after its cool-down, so it keeps its slot)."""
        return sum(1 for s in self.sessions.values() if s.state in HOLDS_SLOT)

    def _admit(self) -> None:
        if self.draining:
            raise AgentError(ErrorCode.DRAINING, f"node {self.node_id} is draining")
        if self._live_count() >= self.settings.max_sessions:
            raise AgentError(
                ErrorCode.CAPACITY_FULL,
                f"node {self.node_id} runs {self.settings.max_sessions} sessions (its maximum)",
            )
        limit = _system.memory_limit_bytes()
        used = _system.rss_bytes()
        if used > self.settings.memory_threshold * limit:
            raise AgentError(
                ErrorCode.MEMORY_PRESSURE,
                f"node {self.node_id} uses {used / limit:.0%} of its memory limit "
                f"(threshold {self.settings.memory_threshold:.0%})",
            )

    async def _current_assignment(self, session_id: str) -> tuple[SessionRecord | None, int]:
        """The session's record in KV and its revision (None, 0 when there is none)."""
        assert self._sessions_kv is not None
        try:
            entry = await self._sessions_kv.get(session_id)
        except KeyNotFoundError:
            return None, 0
        if not entry.value:
            return None, entry.revision or 0
        return msgspec.json.decode(entry.value, type=SessionRecord), entry.revision or 0

    async def _check_epoch(self, session_id: str, epoch: int) -> int:
        """Refuse to run a session unless KV assigns it to us at exactly this epoch.
        Returns the KV revision that says so: the assignment watch ignores anything at or
        below it (an older view arriving late must never stop the session, issue 21)."""
        record, revision = await self._current_assignment(session_id)
        assignment = record.assignment if record else None
        if assignment is None or assignment.node_id != self.node_id or assignment.epoch != epoch:
            current = f"{assignment.node_id}@{assignment.epoch}" if assignment else "none"
            raise AgentError(
                ErrorCode.STALE_EPOCH,
                f"epoch {epoch} on {self.node_id} is not the current assignment ({current})",
            )
        return revision

    def _get(self, ref: SessionRef) -> SessionSupervisor:
        supervisor = self.sessions.get(ref.session_id)
        if supervisor is None:
            raise AgentError(
                ErrorCode.SESSION_NOT_FOUND, f"session {ref.session_id} is not on {self.node_id}"
            )
        if ref.epoch is not None and ref.epoch != supervisor.epoch:
            raise AgentError(
                ErrorCode.STALE_EPOCH,
                f"epoch {ref.epoch} does not match the running epoch {supervisor.epoch}",
            )
        return supervisor

    # -- operations --------------------------------------------------------------------

    async def op_start(self, request: StartSession) -> SessionInfo:
        spec = request.spec
        if not self.lease.valid():
            raise AgentError(
                ErrorCode.LEASE_EXPIRED,
                f"node {self.node_id} lost its lease and runs no session until it renews it",
                retry_after_s=self.settings.heartbeat_interval_s,
            )
        existing = self.sessions.get(spec.key)
        if existing is not None and existing.state in HOLDS_SLOT:
            if existing.epoch == request.epoch:
                return existing.info()  # idempotent: a retried start is a no-op
            if request.epoch < existing.epoch:
                raise AgentError(
                    ErrorCode.STALE_EPOCH,
                    f"epoch {request.epoch} is older than the running epoch {existing.epoch}",
                )
        revision = await self._check_epoch(spec.key, request.epoch)
        if spec.engine != self.engine.name:
            raise AgentError(
                ErrorCode.INVALID_REQUEST,
                f"this node runs the {self.engine.name} engine, not {spec.engine}",
            )
        if existing is not None and self.sessions.get(spec.key) is existing:
            # a newer epoch, or a STOPPED/LOGGED_OUT leftover: end the old one first so
            # its timers can never bring a second socket up
            self.sessions.pop(spec.key, None)
            await existing.stop(f"superseded by epoch {request.epoch}")
        self._admit()
        if self._device_store is not None:
            await self._device_store.restore(spec.key)
        supervisor = SessionSupervisor(
            spec,
            request.epoch,
            self.node_id,
            self.engine.open_session,
            self.events,
            self._supervisor_config,
            on_state=self._state_changed,
            media=self.media,
        )
        supervisor.media_store = self._media_store
        supervisor.on_call_reject = self._on_call_reject  # issue 16
        self.sessions[spec.key] = supervisor
        self._assigned_at[spec.key] = revision
        self._keys[(spec.tenant, spec.session_id)] = spec.key
        await supervisor.start()
        if self._outbox is not None:  # in the background: a start never waits on it
            task = asyncio.create_task(self._restore_outbox(supervisor), name="outbox-restore")
            self._restoring.add(task)
            task.add_done_callback(self._restoring.discard)
        await supervisor.settle(START_SETTLE_S)
        return supervisor.info()

    def _state_changed(
        self, supervisor: SessionSupervisor, _previous: SessionState, _state: SessionState
    ) -> None:
        """Every state change goes to KV ``zf_session_state`` (the control plane lists
        sessions from it without asking this agent)."""
        if self._live is not None:
            self._live.note(supervisor.key, supervisor.info)

    async def op_stop(self, ref: SessionRef) -> SessionInfo:
        supervisor = self._get(ref)
        await supervisor.stop()
        self.sessions.pop(ref.session_id, None)
        self._assigned_at.pop(ref.session_id, None)
        if self._device_store is not None:
            # the next node restores it: a drained session moves without re-pairing
            await self._device_store.backup(ref.session_id)
        return supervisor.info()

    async def op_logout(self, ref: SessionRef) -> SessionInfo:
        supervisor = self._get(ref)
        await supervisor.logout()
        self.sessions.pop(ref.session_id, None)
        self._assigned_at.pop(ref.session_id, None)
        if self._device_store is not None:
            await self._device_store.forget(ref.session_id)
        return supervisor.info()

    async def op_destroy(self, request: DestroySession) -> Empty:
        """The session is deleted: unlink its device and delete what this node and the
        shared stores keep of it (device store file and backup, PostgreSQL jid, sim
        account, outbox, inbound media). Served by every node of the engine (files stay
        where a session once ran); idempotent."""
        spec = request.spec
        if spec.engine != self.engine.name:
            raise AgentError(
                ErrorCode.INVALID_REQUEST,
                f"this node runs the {self.engine.name} engine, not {spec.engine}",
            )
        supervisor = self.sessions.pop(spec.key, None)
        if supervisor is not None:
            with contextlib.suppress(Exception):  # unlink if it can; the state goes anyway
                await supervisor.logout()
        try:
            await self.engine.forget(spec)
            if self._device_store is not None:
                await self._device_store.forget(spec.key)
            if self._outbox is not None:
                await self._outbox.destroy(spec.key)
            if self._media_store is not None:
                await self._media_store.destroy(spec.key)
        except Exception as exc:
            raise AgentError(
                ErrorCode.ENGINE_ERROR, f"device state not deleted: {exc!r}", retry_after_s=1.0
            ) from None
        self._keys.pop((spec.tenant, spec.session_id), None)
        if self._live is not None:
            self._live.forget(spec.key, ran_here=supervisor is not None)
        log.info("session destroyed", extra={"session_id": spec.key})
        return Empty()

    async def op_restart(self, ref: SessionRef) -> SessionInfo:
        supervisor = self._get(ref)
        await supervisor.reconnect()
        return supervisor.info()

    async def op_reconnect(self, ref: SessionRef) -> SessionInfo:
        return await self.op_restart(ref)

    async def op_reset_breaker(self, ref: SessionRef) -> SessionInfo:
        supervisor = self._get(ref)
        await supervisor.reset_breaker()
        return supervisor.info()

    async def op_status(self, ref: SessionRef) -> SessionInfo:
        return self._get(ref).info()

    async def op_qr(self, ref: SessionRef) -> Any:
        supervisor = self._get(ref)
        qr = supervisor.qr
        if supervisor.state is not SessionState.PAIRING or qr is None:
            raise AgentError(
                ErrorCode.NOT_PAIRING, f"session is {supervisor.state}, no QR code to show"
            )
        if qr.expires_at <= time.time():
            raise AgentError(
                ErrorCode.NOT_PAIRING,
                "the QR code expired; the next one is on its way",
                retry_after_s=1.0,
            )
        return qr

    async def op_pair_code(self, request: PairCodeRequest) -> PairCode:
        supervisor = self._get(SessionRef(session_id=request.session_id))
        phone = normalize_number(request.phone)
        if supervisor.state is not SessionState.PAIRING:
            raise AgentError(ErrorCode.NOT_PAIRING, f"session is {supervisor.state}")
        try:
            code = await supervisor.engine.pair_phone(phone)
        except Exception as exc:
            raise AgentError(ErrorCode.ENGINE_ERROR, str(exc)) from None
        return PairCode(code=code)

    async def op_configure(self, request: ConfigureSession) -> SessionInfo:
        supervisor = self._get(SessionRef(session_id=request.session_id))
        pacing = request.pacing
        if pacing is not None and (
            pacing.rate_per_s <= 0
            or pacing.burst < 1
            or pacing.queue_size < 1
            or pacing.daily_cap < 0
            or pacing.min_gap_per_recipient_s < 0
            or not 0 <= pacing.jitter <= 1
            or not 0 <= pacing.typing_s_per_char <= 1
            or not 0 <= pacing.typing_max_s <= 30
        ):
            raise AgentError(ErrorCode.INVALID_REQUEST, f"invalid pacing settings: {pacing}")
        supervisor.reconfigure(pacing, request.device_name, request.proxy)
        if request.media is not None:
            supervisor.spec.media = request.media  # applies to the next received message
        if request.calls is not None:  # issue 16: applies to the next call
            supervisor.spec.calls = request.calls
        return supervisor.info()

    async def op_list(self, _: Empty) -> SessionList:
        return SessionList(sessions=[s.info() for s in self.sessions.values()])

    async def op_node_info(self, _: Empty) -> NodeInfo:
        return self.node_info()

    # -- shutdown ----------------------------------------------------------------------

    async def drain_and_stop(self) -> None:
        """Orderly stop: sessions one by one, flush events, leave NATS."""
        self.draining = True
        for task in self._tasks:
            task.cancel()
        if self._assignments is not None:
            await self._assignments.stop()
        if self._service is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._service.stop(), 2)
        if self._rpc_tasks:  # requests already taken get their answer
            await asyncio.wait(list(self._rpc_tasks), timeout=5)
        for supervisor in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await supervisor.stop("agent shutting down")
            if self._device_store is not None:
                await self._device_store.backup(supervisor.key)
        if self._events is not None:
            # cut off from NATS, waiting for the buffer to drain would only delay the exit
            connected = self._nc is not None and self._nc.is_connected
            await self.events.close(limit_s=10.0 if connected else 1.0)
        if self._live is not None:
            connected = self._nc is not None and self._nc.is_connected
            await self._live.close(limit_s=2.0 if connected else 0.2)
        if self._outbox is not None:
            await self._outbox.close(limit_s=3.0 if self.nc.is_connected else 0.5)
        if self._engine is not None:
            await self.engine.close()
        await self.media.close()
        await close_preview_fetchers()
        self.lag.stop()
        if self._nodes_kv is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nodes_kv.delete(self.node_id), 2)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 3)
            if not self.nc.is_closed:
                await self.nc.close()


async def run_agent(settings: AgentSettings) -> None:
    """Run until SIGTERM/SIGINT, then stop sessions in order."""
    import signal

    from prometheus_client import start_http_server

    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    agent = Agent(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    settle_after_startup()
    await stop.wait()
    log.info("agent stopping")
    await agent.drain_and_stop()
