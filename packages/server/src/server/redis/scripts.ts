/**
 * The Lua scripts that change a job in Redis. Each runs atomically, so a job's state and its numbered events never
 * disagree, whichever process (API or worker) moves it: a state change is the hash update plus its events (`error`,
 * `status`, `done`) with the next sequence numbers, and an event's stream id is `<seq>-0`. The state machine is
 * job-status.ts's, written into the scripts. Every script takes the key prefix (with its ":") as ARGV[1].
 */
import { TERMINAL } from "tsight/protocol";
import { NEXT } from "../job-status.js";
import { RedisScript } from "./connection.js";

const luaSet = (names: readonly string[]) => `{${names.map((n) => `${n}=true`).join(", ")}}`;

const PRELUDE = `
local P = ARGV[1]
local NEXT = {${Object.entries(NEXT).map(([from, to]) => `${from}=${luaSet(to)}`).join(", ")}}
local TERMINAL = ${luaSet(TERMINAL)}

-- A key's event bytes are counted by the hour they were written (P:keyevents:<keyId>, hour -> bytes; see
-- keyEventBytes), kept as long as its events may be: P:eventkeep ms (what the job store set), a week if unset.
-- A failed job's error, kept in its record as well as in its event, is counted so too (the record lives as long).
local HOUR_MS = 3600000
local function countKept(job, bytes)
  local keyId = redis.call('HGET', job, 'keyId')
  if not keyId then return end
  local t = redis.call('TIME')
  local counts = P .. 'keyevents:' .. keyId
  redis.call('HINCRBY', counts, math.floor(tonumber(t[1]) * 1000 / HOUR_MS), bytes)
  redis.call('PEXPIRE', counts, tonumber(redis.call('GET', P .. 'eventkeep') or '604800000') + HOUR_MS)
end

-- A key's results kept now: P:keyresults:<keyId> (job id by expiry), their bytes (P:keyresultbytes:<keyId>, job id
-- -> bytes) and those bytes' sum (P:keyresultsum:<keyId>), so a submission reads a sum instead of the key's jobs.
local function keepResult(keyId, id, bytes, expires)
  local zs, sizes, sum = P .. 'keyresults:' .. keyId, P .. 'keyresultbytes:' .. keyId, P .. 'keyresultsum:' .. keyId
  if redis.call('HSETNX', sizes, id, bytes) == 0 then return end
  redis.call('ZADD', zs, expires, id)
  redis.call('INCRBY', sum, bytes)
  -- Gone with the latest result: an hour past its expiry, the three together (a sum outliving its entries would count
  -- them for good).
  local t = redis.call('TIME')
  local ttl = math.max(HOUR_MS, tonumber(expires) - math.floor(tonumber(t[1]) * 1000) + HOUR_MS)
  for _, k in ipairs({zs, sizes, sum}) do ttl = math.max(ttl, redis.call('PTTL', k)) end
  for _, k in ipairs({zs, sizes, sum}) do redis.call('PEXPIRE', k, ttl) end
end

local function forgetResult(keyId, id)
  local sizes = P .. 'keyresultbytes:' .. keyId
  local bytes = redis.call('HGET', sizes, id)
  if not bytes then return end
  redis.call('HDEL', sizes, id)
  redis.call('ZREM', P .. 'keyresults:' .. keyId, id)
  -- The last one gone: the sum goes too (it is 0), so no old expiry of it outlives the next result's entries.
  if redis.call('HLEN', sizes) == 0 then redis.call('DEL', P .. 'keyresultsum:' .. keyId)
  else redis.call('DECRBY', P .. 'keyresultsum:' .. keyId, bytes) end
end

local function addEvent(id, json)
  local job = P .. 'job:' .. id
  local seq = redis.call('HINCRBY', job, 'lastSeq', 1)
  redis.call('XADD', P .. 'events:' .. id, seq .. '-0', 'e', json)
  countKept(job, #json)
  return seq
end

-- Moves job id to status (see JobStore.move): returns 1, or 0 when it is unknown or cannot move there.
local function move(id, status, now, err, bytes, expires, position, ttl)
  local job = P .. 'job:' .. id
  local cur = redis.call('HGET', job, 'status')
  if not cur or not NEXT[cur] or not NEXT[cur][status] then return 0 end
  redis.call('HSET', job, 'status', status, 'updated', now)
  if status == 'RUNNING' then redis.call('HSET', job, 'started', now) end
  if status == 'QUEUED' and cur ~= 'QUEUED' then redis.call('HSET', job, 'queuedAt', now) end
  if err ~= '' then
    redis.call('HSET', job, 'error', err)
    countKept(job, #err)
    addEvent(id, '{"type":"error","error":' .. err .. '}')
  end
  if bytes ~= '' then
    redis.call('HSET', job, 'result', 'available', 'resultBytes', bytes, 'expires', expires)
    keepResult(redis.call('HGET', job, 'keyId'), id, bytes, expires)
  end
  if position ~= '' then
    redis.call('HSET', job, 'position', position)
    addEvent(id, '{"type":"status","status":"' .. status .. '","position":' .. position .. '}')
  else
    addEvent(id, '{"type":"status","status":"' .. status .. '"}')
  end
  if TERMINAL[status] then
    redis.call('HSET', job, 'finished', now)
    redis.call('HDEL', job, 'position')
    addEvent(id, '{"type":"done","status":"' .. status .. '"}')
    local keyId = redis.call('HGET', job, 'keyId')
    redis.call('ZREM', P .. 'active', id)
    redis.call('SREM', P .. 'keyactive:' .. keyId, id)
    redis.call('DEL', P .. 'body:' .. id, P .. 'local:' .. id)
    redis.call('PEXPIRE', job, ttl)
    redis.call('PEXPIRE', P .. 'events:' .. id, ttl)
  end
  return 1
end
`;

const script = (body: string) => new RedisScript(PRELUDE + body);

/**
 * ARGV: P, id, keyId, model, kind, now, webhook, webhookSecret, limit, batch, idempotency key, body digest. Returns
 * the key's unfinished jobs with this one (its rank, for fair queueing), 0 when the key has `limit` already, or
 * "job:<id>" when the idempotency key names an earlier job of the key (whose digest the caller compares).
 */
export const createJob = script(`
local id, keyId = ARGV[2], ARGV[3]
if ARGV[11] ~= '' then
  local earlier = redis.call('GET', P .. 'idem:' .. keyId .. ':' .. ARGV[11])
  if earlier then return 'job:' .. earlier end
end
if redis.call('SCARD', P .. 'keyactive:' .. keyId) >= tonumber(ARGV[9]) then return 0 end
if ARGV[11] ~= '' then redis.call('SET', P .. 'idem:' .. keyId .. ':' .. ARGV[11], id, 'PX', 86400000) end
local job = P .. 'job:' .. id
redis.call('HSET', job, 'keyId', keyId, 'model', ARGV[4], 'kind', ARGV[5], 'status', 'RECEIVED', 'created', ARGV[6], 'updated', ARGV[6], 'lastSeq', 0, 'result', 'none')
if ARGV[7] ~= '' then redis.call('HSET', job, 'webhook', ARGV[7], 'webhookState', 'pending') end
if ARGV[8] ~= '' then redis.call('HSET', job, 'webhookSecret', ARGV[8]) end
if ARGV[10] ~= '' then redis.call('HSET', job, 'batch', ARGV[10]) end
if ARGV[12] ~= '' then redis.call('HSET', job, 'requestDigest', ARGV[12]) end
addEvent(id, '{"type":"status","status":"RECEIVED"}')
redis.call('ZADD', P .. 'keyjobs:' .. keyId, redis.call('INCR', P .. 'jobseq'), id)
redis.call('ZADD', P .. 'active', ARGV[6], id)
redis.call('SADD', P .. 'keyactive:' .. keyId, id)
return redis.call('SCARD', P .. 'keyactive:' .. keyId)
`);

/** ARGV: P, id, status, now, error JSON, result bytes, expires, position, record ttl ('' for none). 1: moved. */
export const moveJob = script(`return move(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])`);

/** ARGV: P, id, event JSON, hybrid-step call asked ('' if none). The event's seq, or false for an unknown job. */
export const appendEvent = script(`
local id = ARGV[2]
if redis.call('EXISTS', P .. 'job:' .. id) == 0 then return false end
if ARGV[4] ~= '' then redis.call('HSETNX', P .. 'local:' .. id, ARGV[4], 'asked') end
return addEvent(id, ARGV[3])
`);

/**
 * A worker takes a job (ARGV: P, id, now, attempt, worker id, retry note JSON). A job still QUEUED is DISPATCHED; a
 * job whose earlier worker was lost (still DISPATCHED or RUNNING) gets the retry note as a log event and is
 * DISPATCHED again, its hybrid steps forgotten. Answers {'ok', cancel flag} or {'gone'} (ended, e.g. cancelled).
 */
export const claimJob = script(`
local id, now = ARGV[2], ARGV[3]
local job = P .. 'job:' .. id
local status = redis.call('HGET', job, 'status')
if not status or TERMINAL[status] then return {'gone'} end
if status == 'RECEIVED' then move(id, 'QUEUED', now, '', '', '', '', '') end
if status == 'DISPATCHED' or status == 'RUNNING' then
  addEvent(id, ARGV[6])
  redis.call('HSET', job, 'status', 'QUEUED')
  redis.call('DEL', P .. 'local:' .. id)
end
redis.call('HDEL', job, 'lost', 'stopping')
redis.call('HSET', job, 'attempt', ARGV[4], 'worker', ARGV[5])
move(id, 'DISPATCHED', now, '', '', '', '', '')
return {'ok', redis.call('HGET', job, 'cancel') or ''}
`);

/**
 * Cancel (ARGV: P, id, now, record ttl): a job not yet taken by a worker, or waiting for another after its worker
 * was lost, is CANCELLED now ('cancelled'); a running one is flagged and its worker told over the control channel
 * ('running'); 'final' for an ended job.
 */
export const cancelJob = script(`
local id = ARGV[2]
local job = P .. 'job:' .. id
local status = redis.call('HGET', job, 'status')
-- A job whose worker was lost waits in its queue for another: no worker holds it to tell, so it ends now too.
if status == 'RECEIVED' or status == 'QUEUED' or ((status == 'DISPATCHED' or status == 'RUNNING') and redis.call('HGET', job, 'lost')) then
  move(id, 'CANCELLED', ARGV[3], '', '', '', '', ARGV[4])
  return 'cancelled'
end
if status == 'DISPATCHED' or status == 'RUNNING' then
  redis.call('HSET', job, 'cancel', '1')
  redis.call('PUBLISH', P .. 'control', cjson.encode({type = 'cancel', id = id}))
  return 'running'
end
return 'final'
`);

/**
 * A client's answer to a hybrid step (ARGV: P, id, call, answer bytes, ttl ms): kept for the worker, which is told
 * over the control channel. Answers 'ok', 'status:<S>' (not running), 'stopping:<why>', 'unknown' (never asked) or
 * 'answered' (already).
 */
export const answerStep = script(`
local id, call = ARGV[2], ARGV[3]
local job = P .. 'job:' .. id
local status = redis.call('HGET', job, 'status')
if status ~= 'RUNNING' then return 'status:' .. (status or 'unknown') end
local stopping = redis.call('HGET', job, 'stopping')
if stopping then return 'stopping:' .. stopping end
if redis.call('HGET', job, 'cancel') then return 'stopping:cancelled' end
local state = redis.call('HGET', P .. 'local:' .. id, call)
if not state then return 'unknown' end
if state == 'answered' then return 'answered' end
redis.call('HSET', P .. 'local:' .. id, call, 'answered')
redis.call('SET', P .. 'answer:' .. id .. ':' .. call, ARGV[4], 'PX', ARGV[5])
redis.call('PUBLISH', P .. 'control', cjson.encode({type = 'local', id = id, call = call}))
return 'ok'
`);

/**
 * The worker running attempt ARGV[3] of job ARGV[2] was lost (its lock ran out): marks the job lost since ARGV[4]
 * and logs ARGV[5], unless another worker took it up since. 1 when marked.
 */
export const markLost = script(`
local id = ARGV[2]
local job = P .. 'job:' .. id
local status = redis.call('HGET', job, 'status')
if (status ~= 'DISPATCHED' and status ~= 'RUNNING') or redis.call('HGET', job, 'attempt') ~= ARGV[3] then return 0 end
redis.call('HSET', job, 'lost', ARGV[4])
addEvent(id, ARGV[5])
return 1
`);

/**
 * A key's event bytes still kept (ARGV: P, keyId, keep ms): the sum of the hours written within `keep` of now (by
 * Redis's clock, which wrote them), rounded out a whole hour; older hours are dropped.
 */
export const keyEventBytes = script(`
local counts = P .. 'keyevents:' .. ARGV[2]
local t = redis.call('TIME')
local first = math.floor((tonumber(t[1]) * 1000 - tonumber(ARGV[3])) / HOUR_MS)
local all = redis.call('HGETALL', counts)
local total = 0
for i = 1, #all, 2 do
  if tonumber(all[i]) < first then redis.call('HDEL', counts, all[i]) else total = total + tonumber(all[i + 1]) end
end
return total
`);

/**
 * The bytes of a key's results kept now (ARGV: P, keyId, now ms): those past their expiry are forgotten first (a
 * result counts until it expires, is deleted, or its expiry is marked).
 */
export const keyResultBytes = script(`
local keyId = ARGV[2]
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'keyresults:' .. keyId, '-inf', ARGV[3], 'LIMIT', 0, 1000)) do forgetResult(keyId, id) end
return tonumber(redis.call('GET', P .. 'keyresultsum:' .. keyId) or '0')
`);

/** A job's result is no longer kept (ARGV: P, id): past its expiry, or deleted. */
export const expireResult = script(`
local job = P .. 'job:' .. ARGV[2]
if redis.call('HGET', job, 'result') == 'available' then redis.call('HSET', job, 'result', 'expired') end
local keyId = redis.call('HGET', job, 'keyId')
if keyId then forgetResult(keyId, ARGV[2]) end
return 1
`);

/** Lets go of a lock (ARGV: P, lock key, token) if this holder still has it (it may have lapsed and been taken). */
export const releaseLock = script(`
if redis.call('GET', ARGV[2]) == ARGV[3] then redis.call('DEL', ARGV[2]) end
return 1
`);
