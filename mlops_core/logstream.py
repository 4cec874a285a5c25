"""A pipeline's live log in Redis: kept lines, a bounded tail, and a channel for new lines.

Every entry is JSON: `{"seq": n, "ts": t, "line": text}` for a log line (seq counts from 1),
or `{"seq": n, "end": status}` once, when the pipeline reaches a terminal state. A watcher
subscribes first, then reads the history, then forwards live entries with a larger seq.

However much a notebook prints, the history stays bounded (see `LogBounds`): the first lines of
notebook output and every platform line are kept for good in one list; once the head is full,
every new entry goes to a tail list that keeps only the last ones. An entry leaving the tail
moves to the kept list if it is a platform line (or the end) and is otherwise dropped; the
drops between two kept entries are counted in one gap entry stored there, which the history
shows as a line saying how many lines were dropped at that place. Live watchers still receive
every entry as it is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

LOG_TTL_S = 7 * 24 * 3600
# Entries sent to Redis in one script call: a script blocks Redis while it runs.
MAX_ENTRIES_PER_CALL = 500


@dataclass(frozen=True)
class LogBounds:
    """How much of a pipeline's log Redis (and the final transcript) keeps."""

    head: int = 2_000
    """Lines of notebook output kept from the start."""
    tail: int = 5_000
    """Last lines kept, whatever they are: so the end of a run is always there (the end entry
    comes on top)."""
    kept: int = 5_000
    """Lines kept for good at most: the head and platform lines (gap entries and the end come
    on top). Platform lines past it (only a notebook of thousands of cells gets there) are
    treated like output."""


DEFAULT_BOUNDS = LogBounds()

# Kinds of entries, as the tail list stores them (`<kind><stage>\t<entry>`).
_OUTPUT, _PLATFORM, _END = "o", "p", "e"

# NOTE: one script per call keeps the seq, the head/tail choice and the gap count consistent
# with any number of writers (a retried pipeline's next attempt, the gateway cancelling it).
_APPEND = """
local kept, tail, seqkey, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local channel, ttl = ARGV[1], tonumber(ARGV[2])
local head, tail_max, kept_max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local kind, stage = ARGV[6], ARGV[7]
local seq = 0
for i = 8, #ARGV do
  seq = redis.call('INCR', seqkey)
  local entry = '{"seq": ' .. seq .. ', ' .. string.sub(ARGV[i], 2)
  local in_head = true
  if kind == 'o' then
    in_head = redis.call('HINCRBY', meta, 'outputs', 1) <= head
  end
  if redis.call('LLEN', tail) == 0 and in_head
      and (kind == 'e' or redis.call('LLEN', kept) < kept_max) then
    redis.call('RPUSH', kept, entry)
  else
    redis.call('RPUSH', tail, kind .. stage .. '\\t' .. entry)
    -- The end pushes nothing out: the log kept with the final state must stay the same.
    if kind ~= 'e' and redis.call('LLEN', tail) > tail_max then
      local old = redis.call('LPOP', tail)
      local old_kind = string.sub(old, 1, 1)
      local sep = string.find(old, '\\t', 1, true)
      local old_entry = string.sub(old, sep + 1)
      if old_kind == 'e' or (old_kind == 'p' and redis.call('LLEN', kept) < kept_max) then
        redis.call('RPUSH', kept, old_entry)
        redis.call('HSET', meta, 'gap_open', '0')
      elseif redis.call('HGET', meta, 'gap_open') == '1' then
        local gap = cjson.decode(redis.call('LINDEX', kept, -1))
        gap['dropped'] = gap['dropped'] + 1
        redis.call('LSET', kept, -1, cjson.encode(gap))
      else
        local first = cjson.decode(old_entry)
        redis.call('RPUSH', kept, cjson.encode({
          seq = first['seq'], ts = first['ts'], dropped = 1,
          stage = string.sub(old, 2, sep - 1), head = head, tail = tail_max}))
        redis.call('HSET', meta, 'gap_open', '1')
      end
    end
  end
  redis.call('PUBLISH', channel, entry)
end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ttl) end
return seq
"""


def log_key(pipeline_id: str) -> str:
    return f"mlops:pipeline:{pipeline_id}:log"


def tail_key(pipeline_id: str) -> str:
    return log_key(pipeline_id) + ":tail"


def log_channel(pipeline_id: str) -> str:
    return f"mlops:pipeline:{pipeline_id}:live"


def _keys(pipeline_id: str) -> list[str]:
    key = log_key(pipeline_id)
    return [key, tail_key(pipeline_id), key + ":seq", key + ":meta"]


async def _append(
    redis: Redis,
    pipeline_id: str,
    kind: str,
    bodies: Sequence[str],
    stage: str,
    bounds: LogBounds,
) -> int:
    if "\t" in stage or "{" in stage:
        raise ValueError(f"not a stage name: {stage!r}")
    script = redis.register_script(_APPEND)
    seq = 0
    for start in range(0, len(bodies), MAX_ENTRIES_PER_CALL):
        args: list[str | int] = [
            log_channel(pipeline_id),
            LOG_TTL_S,
            bounds.head,
            bounds.tail,
            bounds.kept,
        ]
        args += [kind, stage, *bodies[start : start + MAX_ENTRIES_PER_CALL]]
        seq = int(await script(keys=_keys(pipeline_id), args=args))
    return seq


async def append_lines(
    redis: Redis,
    pipeline_id: str,
    lines: Sequence[str],
    *,
    output: bool,
    stage: str = "",
    bounds: LogBounds = DEFAULT_BOUNDS,
) -> int:
    """Append `lines` (notebook output when `output`, platform lines otherwise) written during
    `stage`; returns the seq of the last one."""
    now = time.time()
    bodies = [json.dumps({"ts": now, "line": line}) for line in lines]
    return await _append(
        redis, pipeline_id, _OUTPUT if output else _PLATFORM, bodies, stage, bounds
    )


async def append_line(redis: Redis, pipeline_id: str, line: str, *, stage: str = "") -> int:
    """Append one platform line; returns its seq."""
    return await append_lines(redis, pipeline_id, [line], output=False, stage=stage)


async def mark_end(
    redis: Redis, pipeline_id: str, status: str, *, bounds: LogBounds = DEFAULT_BOUNDS
) -> int:
    """Append the end entry (never dropped); returns its seq."""
    return await _append(redis, pipeline_id, _END, [json.dumps({"end": status})], "", bounds)


async def history(redis: Redis, pipeline_id: str) -> list[dict[str, Any]]:
    """Every entry kept, in seq order, each gap shown as one line where it is."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.lrange(log_key(pipeline_id), 0, -1)
        pipe.lrange(tail_key(pipeline_id), 0, -1)
        kept, tail = await pipe.execute()
    entries = [_shown(json.loads(raw)) for raw in kept]
    # Every tail entry is newer than every kept one: the tail is where new entries go first.
    for raw in tail:
        text = raw.decode() if isinstance(raw, bytes) else raw
        entries.append(json.loads(text.split("\t", 1)[1]))
    return entries


def _shown(entry: dict[str, Any]) -> dict[str, Any]:
    if "dropped" not in entry:
        return entry
    prefix = f"[{entry['stage']}] " if entry["stage"] else ""
    line = (
        f"{prefix}{int(entry['dropped']):,} lines were dropped here (a pipeline's log keeps the "
        f"first {int(entry['head']):,} lines of notebook output and the last "
        f"{int(entry['tail']):,} lines)"
    )
    return {"seq": int(entry["seq"]), "ts": entry["ts"], "line": line}


def render(entries: list[dict[str, Any]]) -> str:
    """The plain-text log: one line per entry, end markers left out."""
    return "\n".join(e["line"] for e in entries if "line" in e)
