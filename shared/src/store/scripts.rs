//! The Lua scripts behind every write: each checks the job's state and writes in one
//! round trip, atomically, on the job's keys only (one cluster slot).

use std::sync::LazyLock;

use redis::{Cmd, ErrorKind, FromRedisValue, ServerErrorKind, ToRedisArgs};

use super::Conn;

/// Creates the meta hash unless the job exists.
/// KEYS: meta. ARGV: ttl, then field/value pairs.
pub(super) static CREATE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
",
    )
});

/// Appends a batch if the job exists, is not terminal, has the caller's `gen` and the
/// batch's `seq` is new, and the batch was sanitized from the job's stored private-key
/// carry (`pem`, see `logstream_core::sanitize::Batch::carry`; `carry` with the stored
/// one otherwise, so the caller sanitizes again). KEYS: meta, logs, ws. ARGV: gen, seq
/// or '', ttl, maxlen, carry sanitized from or '' (no check), carry after or '',
/// entries…. Answers `ok`, the first and last ids, then the job's WebSocket connection
/// ids, each followed by its token's expiry (so the caller can push the batch without another round trip). The seq check comes before the terminal check so that a retry of a batch
/// that was accepted just before the job ended is still answered as a duplicate.
pub(super) static APPEND: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'status', 'gen', 'seq', 'pem')
if not m[1] then return {'missing'} end
if ARGV[1] ~= '' and m[2] ~= ARGV[1] then return {'stale'} end
if ARGV[2] ~= '' then
  if m[3] and tonumber(ARGV[2]) <= tonumber(m[3]) then return {'duplicate'} end
end
if m[1] == 'ready' or m[1] == 'failed' then return {'terminal', m[1]} end
local pem = m[4] or '0'
if ARGV[5] ~= '' and pem ~= ARGV[5] then return {'carry', pem} end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'seq', ARGV[2]) end
if ARGV[6] ~= '' and ARGV[6] ~= pem then redis.call('HSET', KEYS[1], 'pem', ARGV[6]) end
local first, last
for i = 7, #ARGV do
  last = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[i])
  first = first or last
end
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
local r = {'ok', first, last}
for _, c in ipairs(redis.call('HGETALL', KEYS[3])) do r[#r + 1] = c end
return r
",
    )
});

/// Moves a job to a new status, appending its `status` entry; a terminal status also
/// stamps `finished_at`. The allowed moves mirror [`JobStatus::transition`]. KEYS: meta,
/// logs, ws (one job's keys only: the archive queue lives in another slot and is
/// written by [`LogStore::set_status`] after this script). ARGV: status, entry, ttl,
/// maxlen, now. Answers `ok`, the id, then the job's WebSocket connection ids (each
/// followed by its token's expiry); or
/// `same` with `finished_at` and `archived`, so a retried terminal update can queue the
/// job again if the first attempt stopped before it did.
pub(super) static SET_STATUS: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'status', 'finished_at', 'archived')
local cur = m[1]
if not cur then return {'missing'} end
local to = ARGV[1]
if cur == to then return {'same', m[2] or '', m[3] or ''} end
local ok = (cur == 'queued' and (to == 'running' or to == 'failed'))
  or (cur == 'running' and (to == 'ready' or to == 'failed'))
if not ok then return {'forbidden', cur} end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[2])
redis.call('HSET', KEYS[1], 'status', to)
if to == 'ready' or to == 'failed' then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[5])
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
local r = {'ok', id}
for _, c in ipairs(redis.call('HGETALL', KEYS[3])) do r[#r + 1] = c end
return r
",
    )
});

/// Sets `archived` on a job's meta hash, unless the hash has expired meanwhile (a plain
/// HSET would recreate it without a TTL). KEYS: meta.
pub(super) static MARK_ARCHIVED: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'archived', '1')
return 1
",
    )
});

/// A Lua script, sent as `EVALSHA` and, when the node answers `NOSCRIPT`, as `EVAL`
/// (which also caches it there). Both are routed by the first key, so in a cluster the
/// script runs, and gets cached, on the node that owns the job's slot.
pub(super) struct Lua {
    code: &'static str,
    hash: String,
}

impl Lua {
    fn new(code: &'static str) -> Self {
        Self {
            code,
            hash: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    pub(super) fn key(&self, key: impl ToRedisArgs) -> LuaCall<'_> {
        let mut call = LuaCall {
            lua: self,
            keys: Vec::new(),
            args: Vec::new(),
        };
        call.key(key);
        call
    }
}

/// One invocation of a [`Lua`] script: its keys and arguments.
pub(super) struct LuaCall<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl LuaCall<'_> {
    pub(super) fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    fn cmd(&self, cached: bool) -> Cmd {
        let mut cmd = if cached {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&self.lua.hash);
            cmd
        } else {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(self.lua.code);
            cmd
        };
        cmd.arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        cmd
    }

    pub(super) async fn invoke<T: FromRedisValue>(&self, conn: &mut Conn) -> redis::RedisResult<T> {
        match self.cmd(true).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.cmd(false).query_async(conn).await
            }
            other => other,
        }
    }
}
