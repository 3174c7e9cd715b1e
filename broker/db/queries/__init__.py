"""Queries as functions over an ``AsyncSession`` (or, on the hot path, a connection).

Callers own the transaction. One module per table; this package re-exports them all, so
callers write ``from broker.db import queries`` and ``queries.get_session_row(...)``:

- :mod:`.sessions`: reading a session, moving its state, the tools' lock on its row;
- :mod:`.session_counters`: the session row's event-log counters and usage totals;
- :mod:`.session_events`: the event log;
- :mod:`.tool_calls`: recording, claiming and settling each call once;
- :mod:`.disabled_tools`: the operators' kill switches;
- :mod:`.webhook_deliveries`: the webhook outbox;
- :mod:`.rate_buckets`: the rate limits every broker instance shares (PostgreSQL);
- :mod:`.api_keys`;
- :mod:`.leases`: broker instances and the leases by which one owns each running call;
- :mod:`.call_commands`: actions asked of a call's owner, and ``NOTIFY``.

The ops list of sessions is :mod:`broker.db.session_list`.
"""

from broker.db.queries._common import Executor
from broker.db.queries.api_keys import get_api_key_by_hash
from broker.db.queries.call_commands import (
    finish_command,
    get_command,
    notify,
    pending_commands,
    prune_commands,
    queue_command,
)
from broker.db.queries.disabled_tools import (
    disable_tool,
    disabled_tools,
    enable_tool,
)
from broker.db.queries.leases import (
    ask_handoff,
    calls_leased_to,
    claim_successions,
    ended_among,
    give_up_succession,
    grant_lease,
    hand_over,
    heartbeat_instance,
    lease_of,
    leases_owned_by,
    live_instances,
    orphaned_calls,
    prune_instances,
    prune_leases,
    ready_successors,
    register_instance,
    release_leases,
    remove_instance,
    renew_leases,
    successor_ready,
    take_lease,
    wait_for_locks_at_most,
)
from broker.db.queries.rate_buckets import prune_rate_buckets, take_rate_token
from broker.db.queries.session_counters import (
    LogTally,
    add_session_usage,
    coalescible_spent,
    fold_event_counts,
    usage_by_key,
)
from broker.db.queries.session_events import (
    EventCounts,
    SessionFold,
    add_broker_event,
    add_events,
    handed_over_at,
    last_event_seqs,
    latest_events_of,
    next_event_seq,
    session_events_after,
    store_event_batch,
)
from broker.db.queries.sessions import (
    get_session_row,
    lock_session_for_tools,
    mark_session_ended,
    sessions_with_running_calls,
    set_config,
    set_instructions,
    set_sideband_state,
    stale_sessions,
    transition_session,
)
from broker.db.queries.tool_calls import (
    answered_outputs,
    cancel_tool_call,
    claim_tool_call_returning,
    delivered_outputs,
    get_tool_call,
    list_tool_calls,
    mark_injected,
    record_tool_call,
    reset_tool_call,
    running_tool_calls,
    settle_tool_call,
    settle_tool_call_fast,
    tool_call_counts,
    unfinished_tool_calls,
)
from broker.db.queries.webhook_deliveries import (
    SESSION_ENDED,
    claim_webhook,
    due_webhooks,
    finish_webhook_attempt,
    next_webhook_due,
    queue_session_ended,
)

__all__ = [
    "wait_for_locks_at_most",
    "calls_leased_to",
    "answered_outputs",
    "cancel_tool_call",
    "handed_over_at",
    "SESSION_ENDED",
    "Executor",
    "EventCounts",
    "LogTally",
    "SessionFold",
    "add_broker_event",
    "add_events",
    "add_session_usage",
    "claim_tool_call_returning",
    "claim_webhook",
    "coalescible_spent",
    "delivered_outputs",
    "disable_tool",
    "disabled_tools",
    "due_webhooks",
    "enable_tool",
    "finish_webhook_attempt",
    "fold_event_counts",
    "get_api_key_by_hash",
    "get_session_row",
    "get_tool_call",
    "last_event_seqs",
    "latest_events_of",
    "list_tool_calls",
    "lock_session_for_tools",
    "mark_injected",
    "mark_session_ended",
    "next_event_seq",
    "next_webhook_due",
    "prune_rate_buckets",
    "queue_session_ended",
    "record_tool_call",
    "reset_tool_call",
    "running_tool_calls",
    "session_events_after",
    "sessions_with_running_calls",
    "set_config",
    "set_instructions",
    "set_sideband_state",
    "settle_tool_call",
    "settle_tool_call_fast",
    "stale_sessions",
    "store_event_batch",
    "take_rate_token",
    "tool_call_counts",
    "transition_session",
    "unfinished_tool_calls",
    "usage_by_key",
    "finish_command",
    "get_command",
    "notify",
    "pending_commands",
    "prune_commands",
    "queue_command",
    "ask_handoff",
    "claim_successions",
    "give_up_succession",
    "grant_lease",
    "hand_over",
    "heartbeat_instance",
    "ended_among",
    "lease_of",
    "leases_owned_by",
    "live_instances",
    "orphaned_calls",
    "prune_instances",
    "prune_leases",
    "ready_successors",
    "register_instance",
    "release_leases",
    "remove_instance",
    "renew_leases",
    "successor_ready",
    "take_lease",
]
